"""Connected digits on unseen speakers: Whisper tiny.en zero-shot against crosstune's fine-tuning and against
Hugging Face's documented Whisper recipe, per seed.

Every contestant trains on the same prepared split of ``examples/asr.yaml`` (data/make_digit_strings.py: 400
utterances of jackson, nicolas, theo and yweweler less the 10% validation carve) with the example's epochs,
learning rate, batch size and schedule, and is tested on the 120 utterances of george and lucas, never heard in
training. WER and CER after Whisper's English normaliser, digits counted one by one
(:mod:`crosstune.transcription.error_rates`), greedy decoding:

- ``zero_shot_30s``: the pretrained recogniser as Whisper is meant to run, 30-second windows (no training);
- ``zero_shot``: the same at crosstune's window (the longest training clip rounded up, plus a second): what
  the fine-tuned models start from (the guard's zero-shot reference is the 30-second one);
- ``crosstune_decoder``: ``freeze.depth: all``, the encoder's outputs cached once, the decoder trained;
- ``crosstune_top2``: ``freeze.depth: 2``, the hidden states after encoder block 2 cached, blocks 3-4 and the
  decoder trained;
- ``crosstune_full``: ``freeze.depth: 0``, everything trained on the window;
- ``trainer``: the recipe of Hugging Face's "Fine-Tune Whisper For Multilingual ASR with Transformers"
  (https://huggingface.co/blog/fine-tune-whisper): ``WhisperFeatureExtractor`` padding every clip to 30 s,
  ``DataCollatorSpeechSeq2SeqWithPadding``, ``Seq2SeqTrainer`` with ``predict_with_generate``, the whole model
  trained, evaluated on validation WER every epoch, the best epoch kept.

Seconds per epoch count the training passes only (crosstune: :class:`crosstune.training.loop.TrainResult`'s
``epoch_seconds``; Trainer: between its epoch callbacks, validation excluded), the cache's one pass reported
apart. Each run is its own subprocess; its peak resident memory is recorded. Writes bench/asr/results.json;
``table.py`` prints the README tables.

    .venv/bin/python bench/asr/run.py [--seeds 42,43,44] [--tools zero_shot_30s,crosstune_decoder,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from workdir import (  # noqa: E402  (also puts src/ on the path)
    contestant_arguments,
    default_params,
    done_runs,
    load_results,
    measure_contestant,
    merge,
    prepare_workdir,
    record_run,
    run_contestant,
)

TOOLS = ("zero_shot_30s", "zero_shot", "crosstune_decoder", "crosstune_top2", "crosstune_full", "trainer")
DEPTHS = {"crosstune_decoder": "all", "crosstune_top2": 2, "crosstune_full": 0}


def _test_table(workdir: Path) -> tuple[list[str], list[str], list[str]]:
    from crosstune.data.prepared_dir import read_split

    frame = read_split(str(workdir / "prepared"), "test")
    return list(frame["audio"]), list(frame["label"]), list(frame["speaker"].astype(str))


def _scores(references: list[str], hypotheses: list[str], speakers: list[str]) -> dict[str, float]:
    from crosstune.tasks.registry import TASKS

    return TASKS.get("transcription").score_texts(references, hypotheses, speakers, per_class=True)


def run_crosstune(workdir: Path, params_path: Path, seed: int) -> dict:
    """The finetune stage's loop on the attached recogniser (cached prefix where the freeze allows), then greedy
    transcripts of the test split, and the zero-shot model's at the same window."""
    from crosstune.config import AugmentParams, CacheParams, FinetuneParams, load_section
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.freezing.policy import apply_policy
    from crosstune.prefix_cache.plan import plan_cache
    from crosstune.prefix_cache.store import CachedBatching, build_cached_split
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import RunContext
    from crosstune.transcription.decoding import transcribe_split
    from crosstune.transfer_model.settings import saved_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    params = load_section(FinetuneParams, params_path)
    model, config = load_transfer_model(workdir / "initial")
    apply_policy(model, saved_freeze(config), seed)
    splits = {name: load_any_split(workdir / f"encoded/{name}.safetensors") for name in ("train", "validation", "test")}
    batching, level = batching_for(config, params.batch_size, 0), None
    train_split, validation_split = splits["train"], splits["validation"]
    plan = plan_cache(config, load_section(CacheParams, params_path), load_section(AugmentParams, params_path), params)
    started = time.perf_counter()
    if plan.cached:
        train_split, validation_split = (build_cached_split(model, plan.level, split, batching, 32, "float32", "cpu")
                                         for split in (train_split, validation_split))
        batching, level = CachedBatching(params.batch_size, "audio"), plan.level
    cache_seconds = time.perf_counter() - started
    result = train(model, TrainingData(train_split, validation_split, batching, level), params, seed,
                   RunContext.single_process("cpu", params.mixed_precision))
    paths, references, speakers = _test_table(workdir)
    started = time.perf_counter()
    hypotheses, _ = transcribe_split(model, splits["test"], batching_for(config, 32, 0), "cpu")
    decode_seconds = time.perf_counter() - started
    return {"epoch_seconds": result.epoch_seconds, "validation_wer": [h["wer"] for h in result.history],
            "best_epoch": result.best_epoch, "precision": result.precision, "cache_seconds": cache_seconds,
            "cached_level": plan.level, "decode_seconds": decode_seconds,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "test": _scores(references, hypotheses, speakers), "examples": list(zip(references, hypotheses))[:8]}


def run_zero_shot(workdir: Path, params_path: Path, seed: int, window: int | None) -> dict:
    """The pretrained recogniser untrained: at crosstune's window (``window`` None) or padded to ``window`` s."""
    import numpy as np
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from crosstune.backbones.whisper_weights import converted_whisper_model
    from crosstune.data.audio import read_audio, resample
    from crosstune.transcription.recogniser import decode_texts, generate_ids

    paths, references, speakers = _test_table(workdir)
    directory = converted_whisper_model()
    model = WhisperForConditionalGeneration.from_pretrained(directory).eval()
    summary = json.loads((workdir / "backbone.json").read_text())
    bound, window = int(summary["max_new_tokens"]), window or int(summary["clip_seconds"])
    tokenizer = _tokenizer(directory)
    if window < 30:  # crosstune's window: the encoder's positional table cut to it
        from crosstune.transcription.recogniser import windowed

        windowed(model, window)
    extractor = WhisperFeatureExtractor.from_pretrained(directory, chunk_length=window)
    hypotheses = []
    started = time.perf_counter()
    for start in range(0, len(paths), 16):
        waves = [resample(*read_audio(path), 16000) for path in paths[start:start + 16]]
        features = extractor(waves, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
        ids = generate_ids(model, features=torch.from_numpy(features), new_tokens=bound)
        hypotheses += decode_texts(tokenizer, ids)
    return {"decode_seconds": time.perf_counter() - started, "window_seconds": window,
            "test": _scores(references, hypotheses, speakers), "examples": list(zip(references, hypotheses))[:8]}


def _tokenizer(directory: Path):
    from transformers import WhisperTokenizer

    return WhisperTokenizer.from_pretrained(str(directory))


def run_trainer(workdir: Path, params_path: Path, seed: int) -> dict:
    """Hugging Face's documented Whisper fine-tuning recipe on the same split, epochs, rate, batch and schedule."""
    import numpy as np
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    from crosstune.backbones.whisper_weights import converted_whisper_model
    from crosstune.config import FinetuneParams, load_section
    from crosstune.data.audio import read_audio, resample
    from crosstune.data.prepared_dir import read_split
    from crosstune.transcription.error_rates import error_rates

    params = load_section(FinetuneParams, params_path)
    directory = converted_whisper_model()
    extractor = WhisperFeatureExtractor.from_pretrained(directory)
    tokenizer = WhisperTokenizer.from_pretrained(str(directory))
    bound = int(json.loads((workdir / "backbone.json").read_text())["max_new_tokens"])

    def rows(split: str) -> list[dict]:
        frame = read_split(str(workdir / "prepared"), split)
        return [{"input_features": extractor(resample(*read_audio(path), 16000), sampling_rate=16000).input_features[0],
                 "labels": tokenizer(" " + text).input_ids} for path, text in zip(frame["audio"], frame["label"])]

    @dataclasses.dataclass
    class DataCollatorSpeechSeq2SeqWithPadding:  # the blog's collator, as written there
        decoder_start_token_id: int

        def __call__(self, features: list[dict]) -> dict:
            input_features = [{"input_features": feature["input_features"]} for feature in features]
            batch = extractor.pad(input_features, return_tensors="pt")
            label_features = [{"input_ids": feature["labels"]} for feature in features]
            labels_batch = tokenizer.pad(label_features, return_tensors="pt")
            labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
            if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
                labels = labels[:, 1:]
            batch["labels"] = labels
            return batch

    train_rows, validation_rows, test_rows = rows("train"), rows("validation"), rows("test")
    model = WhisperForConditionalGeneration.from_pretrained(directory)
    model.generation_config.max_new_tokens = bound
    epoch_seconds: list[float] = []

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            epoch_seconds.append(time.perf_counter() - self.started)

    def compute_metrics(prediction) -> dict:
        predicted = np.where(prediction.predictions != -100, prediction.predictions, tokenizer.pad_token_id)
        label_ids = np.where(prediction.label_ids != -100, prediction.label_ids, tokenizer.pad_token_id)
        hypotheses = tokenizer.batch_decode(predicted, skip_special_tokens=True)
        references = tokenizer.batch_decode(label_ids, skip_special_tokens=True)
        return {"wer": error_rates(references, hypotheses)["wer"]}

    out = Path(tempfile.mkdtemp(prefix="crosstune-asr-trainer-"))
    steps = math.ceil(len(train_rows) / params.batch_size) * params.epochs  # transformers 5 has no warmup_ratio
    args = Seq2SeqTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=params.batch_size, per_device_eval_batch_size=32,
        learning_rate=params.lr, weight_decay=params.weight_decay, warmup_steps=int(params.warmup_ratio * steps),
        lr_scheduler_type=params.scheduler, num_train_epochs=params.epochs, eval_strategy="epoch",
        save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="wer",
        greater_is_better=False, predict_with_generate=True, generation_max_length=bound + 2, logging_steps=10,
        report_to="none", seed=seed, use_cpu=True, dataloader_num_workers=0)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=validation_rows,
                             data_collator=DataCollatorSpeechSeq2SeqWithPadding(model.config.decoder_start_token_id),
                             compute_metrics=compute_metrics, processing_class=extractor, callbacks=[EpochTimer()])
    trainer.train()
    history = [row["eval_wer"] for row in trainer.state.log_history if "eval_wer" in row]
    started = time.perf_counter()
    prediction = trainer.predict(test_rows)
    decode_seconds = time.perf_counter() - started
    predicted = np.where(prediction.predictions != -100, prediction.predictions, tokenizer.pad_token_id)
    hypotheses = [text.strip() for text in tokenizer.batch_decode(predicted, skip_special_tokens=True)]
    _, references, speakers = _test_table(workdir)
    return {"epoch_seconds": epoch_seconds, "validation_wer": history, "decode_seconds": decode_seconds,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "test": _scores(references, hypotheses, speakers), "examples": list(zip(references, hypotheses))[:8]}


def worker(tool: str, workdir: Path, params_path: Path, seed: int, out: Path) -> None:
    if tool in DEPTHS:
        measure_contestant(lambda: run_crosstune(workdir, params_path, seed), out)
    elif tool.startswith("zero_shot"):
        window = 30 if tool == "zero_shot_30s" else None
        measure_contestant(lambda: run_zero_shot(workdir, params_path, seed, window), out)
    else:
        measure_contestant(lambda: run_trainer(workdir, params_path, seed), out)


def _workdir(tool: str, seed: int) -> tuple[Path, Path]:
    """Prepare, encode and attach for one seed (the seed fixes the validation carve) and freeze depth."""
    params = default_params("examples/asr.yaml")
    params = merge(params, {"base": {"seed": seed}, "freeze": {"depth": DEPTHS.get(tool, "all")}})
    work = Path(tempfile.mkdtemp(prefix=f"crosstune-asr-{tool}-{seed}-"))
    return work, prepare_workdir(work, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    contestant_arguments(parser, TOOLS, str(REPO / "bench/asr/results.json"))
    parser.add_argument("--trainer-seeds", default="42", help="seeds of the (slow) Trainer recipe")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.workdir), Path(args.params), args.seed, Path(args.result))
        return
    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    if not (REPO / "data" / "digit_strings" / "train.csv").is_file():
        subprocess.run([sys.executable, str(REPO / "data" / "make_digit_strings.py")], check=True)
    out = Path(args.out)
    results = load_results(out)
    done = done_runs(results, ("seed", "tool"))
    for tool in args.tools.split(","):
        seeds = args.trainer_seeds if tool == "trainer" else "42" if tool.startswith("zero_shot") else args.seeds
        for seed in (int(value) for value in seeds.split(",")):
            if (seed, tool) in done:
                continue
            workdir, params_path = _workdir(tool, seed)
            print(f"seed={seed}: {tool} ...", flush=True)
            run = {"seed": seed, "tool": tool, **run_contestant(__file__, tool, workdir, params_path, seed)}
            record_run(results, out, "asr", results["runs"], run)


if __name__ == "__main__":
    main()
