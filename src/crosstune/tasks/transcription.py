"""``prepare.task: transcription``: speech recognition, a transcript per recording, scored by word error rate.

Inputs are recordings with their transcripts: a table (CSV/TSV/...) with a path column and a transcript column
(Common Voice's ``path``/``sentence``, Hugging Face audiofolder's ``file_name``/``transcription``, or the
``prepare.audio_column`` / ``prepare.label_column`` given), or a folder of ``x.wav`` + ``x.txt`` pairs. An
optional ``speaker`` (or Common Voice's ``client_id``) column groups the error rates. The model is a whole
Whisper recogniser (:mod:`crosstune.transfer_model.speech_recognition`): the encoder is the backbone, the
pretrained decoder the head. The loss is token cross-entropy of the next token; the metrics are word and
character error rates after Whisper's English normaliser (:mod:`crosstune.transcription.error_rates`), lower
is better; the headline is WER. The guard's reference is the pretrained recogniser without fine-tuning
(zero-shot), which the probe stage scores; the export is a stock ``WhisperForConditionalGeneration``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from crosstune.errors import ConfigError, DataError
from crosstune.tasks.base import Task

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

PATH_COLUMNS = ("path", "file_name", "audio", "file", "filename")  # Common Voice, audiofolder, ours
TRANSCRIPT_COLUMNS = ("sentence", "transcription", "transcript", "text", "normalized_text")
SPEAKER_COLUMNS = ("speaker", "client_id", "speaker_id")
TRANSCRIPT_SUFFIX = ".txt"


def _column(frame: "pd.DataFrame", given: str, known: Sequence[str]) -> str | None:
    """The column a table's recordings or transcripts are in: the one params name, else the first known name."""
    if given in frame.columns:
        return given
    return next((name for name in known if name in frame.columns), None)


class Transcription(Task):
    """A transcript per recording (speech recognition)."""

    name = "transcription"
    own_params = ("evaluate.num_beams",)
    output = "a transcript per recording"
    modalities = ("audio",)
    losses = ("token_cross_entropy",)
    metrics = {"wer": False, "cer": False, "loss": False}
    headline = "wer"
    summary_metrics = ("wer", "cer")
    baseline_metrics = ("wer", "cer")
    card_metrics = ("wer", "cer")
    label_dtype = str
    hf_auto_class = "AutoModelForSpeechSeq2Seq"
    hf_problem_type = ""
    reads_files = True
    cleans_texts = False  # transcripts are kept as written; WER normalises both sides alike
    prediction_shape = '[{"text": ...}]'
    prepared_columns = ("speaker",)
    model_form = "recogniser"

    # --- reading -------------------------------------------------------------------------------------------

    def read_examples(self, path: Path, params: Any) -> "pd.DataFrame":
        """A table of recording paths and transcripts, or a folder of ``x.wav`` + ``x.txt`` pairs, as a prepared
        frame: ``audio`` (resolved paths), ``label`` (the transcript) and ``speaker`` ("" when not given);
        every recording decoded once to check it (:func:`crosstune.data.audio.check_audio`)."""
        from crosstune.data.audio import check_audio

        frame = self._read_folder(path) if path.is_dir() else self._read_table(path, params)
        for recording in frame["audio"]:
            check_audio(Path(recording), params.min_audio_seconds)
        return frame

    def _read_folder(self, directory: Path) -> "pd.DataFrame":
        import pandas as pd

        from crosstune.data.audio import AUDIO_SUFFIXES

        recordings = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not recordings:
            raise DataError(f"{directory}: no recordings ({', '.join(AUDIO_SUFFIXES)}); a transcription folder "
                            f"holds x.wav beside x.txt.")
        texts = {p.with_suffix("") for p in directory.rglob(f"*{TRANSCRIPT_SUFFIX}") if p.is_file()}
        lonely = sorted(texts - {p.with_suffix("") for p in recordings})
        if lonely:
            raise DataError(f"{lonely[0]}{TRANSCRIPT_SUFFIX}: a transcript without its recording "
                            f"({len(lonely)} such); add {lonely[0].name}.wav or remove the transcript.")
        rows = []
        for recording in recordings:
            transcript = recording.with_suffix(TRANSCRIPT_SUFFIX)
            if not transcript.is_file():
                raise DataError(f"{recording}: no transcript beside it; write its text into {transcript}.")
            text = transcript.read_text(encoding="utf-8").strip()
            if not text:
                raise DataError(f"{transcript}: empty transcript; write what {recording.name} says, or remove both.")
            speaker = recording.parent.name if recording.parent != directory else ""
            rows.append({"audio": str(recording), "label": " ".join(text.split()), "speaker": speaker})
        return pd.DataFrame(rows)

    def _read_table(self, path: Path, params: Any) -> "pd.DataFrame":
        import pandas as pd

        from crosstune.data.tables import read_table, row_numbers

        frame = read_table(path, params.separator).reset_index(drop=True)
        audio = _column(frame, params.audio_column, PATH_COLUMNS)
        text = _column(frame, params.label_column, TRANSCRIPT_COLUMNS)
        if audio is None or text is None:
            missing = [name for name, found in (("recording paths", audio), ("transcripts", text)) if found is None]
            raise DataError(f"{path}: no column of {' or '.join(missing)}; the file has {list(frame.columns)}. Set "
                            f"prepare.audio_column / prepare.label_column to the columns that hold them.")
        paths = frame[audio].fillna("").astype(str).str.strip()
        if (paths == "").any():
            raise DataError(f"{path}: empty recording path in column {audio!r} at row(s) "
                            f"{row_numbers(paths == '')}; fill in the path or remove those rows.")
        transcripts = frame[text].fillna("").astype(str).map(lambda value: " ".join(value.split()))
        if (transcripts == "").any():
            raise DataError(f"{path}: empty transcript in column {text!r} at row(s) {row_numbers(transcripts == '')}"
                            f"; write what those recordings say, or remove the rows.")
        resolved = [str(p if p.is_absolute() else path.parent / p) for p in map(Path, paths)]
        missing_files = [index for index, candidate in enumerate(resolved) if not Path(candidate).is_file()]
        if missing_files:
            first = missing_files[0]
            raise DataError(f"{path}: recording not found at row {first + 1} ({resolved[first]}; "
                            f"{len(missing_files)} missing in all); paths are relative to the table's folder.")
        speaker_column = _column(frame, "speaker", SPEAKER_COLUMNS)
        speakers = frame[speaker_column].fillna("").astype(str) if speaker_column else [""] * len(frame)
        return pd.DataFrame({"audio": resolved, "label": list(transcripts), "speaker": list(speakers)})

    def read_labels(self, values: "pd.Series", path: Path) -> "pd.Series":
        return values.astype(str)

    def label_names(self, train: "pd.DataFrame") -> list[str]:
        return []

    def check_source_domain(self, path: Path) -> None:
        raise DataError(f"{path}: a labelled source domain is not used for transcription; set data.source to "
                        f"data/source (no source domain).")

    # --- encoding and training ------------------------------------------------------------------------------

    def encode_labels(self, labels: "pd.Series", names: Sequence[str]) -> "torch.Tensor":
        raise NotImplementedError("transcripts are encoded with the recogniser's tokenizer "
                                  "(crosstune.transcription.recogniser.encode_transcripts)")

    def labelled(self, targets: "np.ndarray") -> "np.ndarray":
        import numpy as np

        return np.ones(len(targets), dtype=bool)

    def num_outputs(self, labels: Sequence[str]) -> int:
        return 0  # the decoder's vocabulary: fixed by the recogniser

    def build_loss(self, name: str, class_weights: "torch.Tensor | None", label_smoothing: float) -> "torch.nn.Module":
        from crosstune.training.losses import LOSSES

        self.check_loss(name)
        return LOSSES.get(name, "finetune.loss")(None, label_smoothing)

    def is_better(self, metric: str, candidate: float, best: float | None) -> bool:
        if metric not in self.metrics:
            raise ConfigError(f"params.yaml: finetune.select_metric: {metric!r} does not apply to transcription; "
                              f"use one of {sorted(self.metrics)}.")
        return super().is_better(metric, candidate, best)

    def validation_metrics(self, model: Any, split: Any, loss_fn: Any, labels: Sequence[str], batching: Any,
                           device: str) -> dict[str, float]:
        """Teacher-forced loss per token, and WER and CER of greedy transcripts (what the model will output,
        not what it predicts next given the truth)."""
        from crosstune.transcription.decoding import reference_texts, transcribe_split

        hypotheses, loss = transcribe_split(model.model, split, batching, device, level=model.level,
                                            batch_size=batching.batch_size * 2, loss_fn=loss_fn)
        return {"loss": float(loss if loss is not None else float("nan")),
                **self.score_texts(reference_texts(model.model, split), hypotheses)}

    # --- outputs and metrics: texts, not tensors -------------------------------------------------------------

    def score_texts(self, references: Sequence[str], hypotheses: Sequence[str],
                    speakers: Sequence[str] | None = None, per_class: bool = False) -> dict[str, float]:
        """WER and CER of ``hypotheses``; with ``per_class`` and speakers, each speaker's too
        (``{speaker}_wer``, ``{speaker}_cer``, ``{speaker}_words``)."""
        from crosstune.transcription.error_rates import error_rates, grouped_error_rates

        rates = error_rates(references, hypotheses)
        result = {"wer": rates["wer"], "cer": rates["cer"]}
        if per_class:
            result.update({"substitutions": rates["substitutions"], "deletions": rates["deletions"],
                           "insertions": rates["insertions"], "reference_words": rates["reference_words"]})
            if speakers is not None and any(speakers):
                for speaker, row in grouped_error_rates(references, hypotheses, list(speakers)).items():
                    name = speaker or "unknown"
                    result.update({f"{name}_wer": row["wer"], f"{name}_cer": row["cer"],
                                   f"{name}_words": row["reference_words"]})
        return result

    def report_sections(self, test: dict[str, Any], predictions: Path) -> list[str] | None:
        """Error rates per speaker (fine-tuned and zero-shot) and the worst test utterances, aligned."""
        from crosstune.reporting.aligned_transcripts import per_speaker_html, transcripts_html

        return [per_speaker_html(test), transcripts_html(predictions)]

    def check_new_inputs(self, inputs: Sequence[Any], config: dict[str, Any]) -> None:
        """Recordings longer than the model's window would lose their end: refused by name."""
        import soundfile

        preprocessing = config["backbone"]["preprocessing"]
        window = preprocessing["clip_samples"] / preprocessing["sample_rate"]
        for path in inputs:
            try:
                seconds = float(soundfile.info(str(path)).duration)
            except (RuntimeError, OSError) as error:  # soundfile's LibsndfileError is a RuntimeError
                raise DataError(f"{path}: unreadable or corrupt audio ({error}); replace or remove the file.") \
                    from error
            if seconds > window:
                raise DataError(f"{path}: {seconds:.2f} s is longer than this recogniser's {window:g} s window; cut "
                                f"it into shorter utterances, or retrain with a larger backbone.clip_seconds (at most "
                                f"30).")

    def predict_split(self, model: Any, split: Any, batching: Any, device: str) -> list[str]:
        """Greedy transcripts (the model's generation config bounds their length)."""
        from crosstune.transcription.decoding import transcribe_split

        return transcribe_split(model, split, batching, device)[0]

    def prediction_records(self, outputs: Any, split: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
        return [{"text": text} for text in outputs]

    def transferability(self, score: str) -> Any:
        raise ConfigError("params.yaml: backbone.name: auto ranks encoders for one label per clip; transcription "
                          "needs a whole recogniser: set backbone.name: whisper-tiny-en.")

    def block_transferability(self) -> Any:
        raise ConfigError("params.yaml: freeze.depth: auto scores blocks for one label per clip; for transcription "
                          "give a number of encoder blocks (0-4) or all.")

    def hf_config(self, config: Any, labels: Sequence[str]) -> None:
        """Nothing to set: a recogniser has no label maps."""
