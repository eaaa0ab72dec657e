"""The evaluate stage for a recogniser: test WER and CER overall and per speaker, the transcripts with their
aligned errors, and the guard.

The guard's reference is the pretrained recogniser without fine-tuning (the probe stage's zero-shot model, run
as released: Whisper at its 30-second window): ``finetuning_gain`` = zero-shot WER minus fine-tuned WER on test
(above zero: fine-tuning helped), and with ``evaluate.guard: fallback`` the exported model is whichever of the
two validates with the lower WER (a tie keeps the fine-tuned one). A model trained from random weights is not
compared: a recogniser learned from a few hundred utterances does not transcribe at all, so it could neither
win nor tell anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def evaluate_recogniser(model_dir: str, encoded_dir: str, prepared_dir: str, metrics_path: str,
                        predictions_path: str, examples_path: str, params: Any, base: Any,
                        probe_dir: str | None) -> dict[str, Any]:
    """Score the fine-tuned (and, with the guard, the zero-shot) recogniser; write the metrics, the predictions
    table (reference, transcript, per-utterance errors, alignment) and the worst utterances' picture."""
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared_dir import read_split
    from crosstune.evaluation.guard import guard_model_dir, refuse_baselines
    from crosstune.io import write_metrics, write_metrics_csv
    from crosstune.reporting.aligned_transcripts import (
        aligned_transcripts_figure,
        alignment_column,
    )
    from crosstune.runtime import setup
    from crosstune.tasks.registry import TASKS
    from crosstune.transcription.decoding import transcribe_split
    from crosstune.transcription.error_rates import error_rates
    from crosstune.transfer_model.storage import load_transfer_model

    refuse_baselines(params.baselines, "transcription is compared with the zero-shot recogniser")
    device = setup(base)
    model, config = load_transfer_model(model_dir)
    model.to(device)
    task = TASKS.get(config["task"])
    splits = {name: load_any_split(Path(encoded_dir) / f"{name}.safetensors") for name in ("validation", "test")}
    test_frame = read_split(prepared_dir, "test")
    references = list(test_frame["label"])
    speakers = list(test_frame["speaker"].fillna("").astype(str)) if "speaker" in test_frame else None

    def transcribe(candidate: Any, settings: dict[str, Any], split: str) -> list[str]:
        batching = batching_for(settings, params.batch_size, 0)  # each at its own window
        return transcribe_split(candidate, splits[split], batching, device, num_beams=params.num_beams)[0]

    transcripts = {"finetuned": transcribe(model, config, "test")}
    metrics: dict[str, Any] = task.score_texts(references, transcripts["finetuned"], speakers, per_class=True)
    exported = "finetuned"
    if params.guard != "off":
        probe_dir = guard_model_dir(probe_dir, "probe", params.guard,
                                    "the fine-tuned recogniser with the zero-shot one")
        zero_shot, zero_shot_config = load_transfer_model(probe_dir)
        zero_shot.to(device)
        transcripts["probe"] = transcribe(zero_shot, zero_shot_config, "test")
        tested = {"finetuned": metrics, "probe": task.score_texts(references, transcripts["probe"], speakers,
                                                                  per_class=True)}
        validation_references = list(read_split(prepared_dir, "validation")["label"])
        validation = {name: error_rates(validation_references, transcribe(candidate, settings, "validation"))["wer"]
                      for name, candidate, settings in (("finetuned", model, config),
                                                        ("probe", zero_shot, zero_shot_config))}
        gain = task.gain("wer", tested["finetuned"]["wer"], tested["probe"]["wer"])
        guard = {"guard": params.guard, "guard_reference": "zero_shot", "scratch_model": "not compared (transcription)",
                 "finetuning_gain": gain, "negative_transfer": bool(gain < 0)}
        for key in ("wer", "cer"):
            guard.update({f"{name}_{key}": tested[name][key] for name in tested})
        guard.update({f"zero_shot_{key}": value for key, value in tested["probe"].items() if key.endswith("_wer")})
        guard.update({f"{name}_validation_wer": value for name, value in validation.items()})
        if gain < 0:
            logger.warning("the fine-tuned recogniser's test WER %.4f is above the zero-shot one's (%.4f): "
                           "fine-tuning hurt; freeze more (freeze.depth), lower finetune.lr or train fewer epochs",
                           tested["finetuned"]["wer"], tested["probe"]["wer"])
        if params.guard == "fallback" and task.is_better("wer", validation["probe"], validation["finetuned"]):
            exported = "probe"
            logger.warning("guard: fallback: the zero-shot recogniser validates better than the fine-tuned one "
                           "(WER %.4f vs %.4f); it is the exported model", validation["probe"],
                           validation["finetuned"])
            metrics = dict(tested["probe"])
        metrics.update(guard)
    metrics["exported_model"] = exported
    metrics["test_size"] = len(test_frame)
    shown = transcripts[exported]
    table = test_frame[["audio", "label", *[c for c in task.prepared_columns if c in test_frame]]].copy()
    table["predicted"] = shown
    table["word_errors"] = [_word_errors(ref, hyp) for ref, hyp in zip(references, shown)]
    table["alignment"] = alignment_column(references, shown)
    aligned_transcripts_figure(examples_path, table)
    write_metrics(metrics_path, metrics)
    write_metrics_csv(predictions_path, table)
    logger.info("test WER %.4f, CER %.4f (%s model)%s", metrics["wer"], metrics["cer"], exported,
                f"; zero-shot WER {metrics['probe_wer']:.4f}" if "probe_wer" in metrics else "")
    return metrics


def _word_errors(reference: str, hypothesis: str) -> int:
    from crosstune.transcription.error_rates import error_rates

    rates = error_rates([reference], [hypothesis])
    return int(rates["substitutions"] + rates["deletions"] + rates["insertions"])
