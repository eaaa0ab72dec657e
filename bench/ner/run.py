"""Disease mentions (NCBI disease corpus): crosstune against the CRF baseline and Hugging Face Trainer, per seed.

Every contestant trains on the same prepared split of ``examples/ner.yaml`` (train.tsv less the 10% validation
carve, test.tsv whole) with the example's backbone, epochs, learning rate, batch size and schedule:

- ``crosstune``: the finetune stage's loop on the attached model (token states -> linear head), words'
  first sub-tokens tagged, long sentences in overlapping windows, the best epoch kept on validation entity F1;
- ``trainer``: ``AutoModelForTokenClassification`` on the same backbone, as the token-classification guide
  documents it (``is_split_into_words`` tokenisation truncated at max_length, labels on each word's first
  sub-token, ``DataCollatorForTokenClassification``, evaluation every epoch on seqeval F1 with
  ``load_best_model_at_end``);
- ``trainer_grouped_bf16``: the same with ``train_sampling_strategy="group_by_length"`` and ``bf16=True``;
- ``crosstune_bf16``: crosstune with ``finetune.mixed_precision: bf16`` (bf16 autocast, as Trainer's ``bf16=True``);
- ``crf``: sklearn-crfsuite over word features, c1 = c2 = 0.1 (crosstune's ``crf`` baseline).

Test scores are seqeval's strict IOB2 entity micro-F1 on words (a word Trainer's truncation dropped counts as
O). Each neural run is its own subprocess. ``--sizes`` adds a learning curve (crosstune and the CRF on the first
N training sentences, the same validation and test). Writes bench/ner/results.json; ``table.py`` prints the
README tables.

    .venv/bin/python bench/ner/run.py [--seeds 42,43,44] [--tools crosstune,trainer,trainer_grouped_bf16,crf]
        [--backbones minilm-l6] [--sizes 100,500]
"""

from __future__ import annotations

import argparse
import dataclasses
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

TOOLS = ("crosstune", "crosstune_bf16", "trainer", "trainer_grouped_bf16", "crf")


def _sentences(workdir: Path, split: str) -> tuple[list[list[str]], list[list[str]]]:
    from crosstune.data.prepared_dir import read_split
    from crosstune.tasks.registry import TASKS

    return TASKS.get("token_classification").baseline_examples(read_split(str(workdir / "prepared"), split))


def _scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    from crosstune.tasks.token_classification import entity_metrics

    return entity_metrics(gold, predicted)


def run_crosstune(workdir: Path, params_path: Path, seed: int, mixed_precision: str | None = None) -> dict:
    from crosstune.config import AugmentParams, CacheParams, FinetuneParams, load_section
    from crosstune.data.batching import TextBatching, load_any_split
    from crosstune.freezing.policy import apply_policy
    from crosstune.inference.outputs import predict_outputs
    from crosstune.prefix_cache.plan import plan_cache
    from crosstune.prefix_cache.store import CachedBatching, build_cached_split
    from crosstune.tasks.registry import TASKS
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import RunContext
    from crosstune.transfer_model.settings import saved_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    params = load_section(FinetuneParams, params_path)
    if mixed_precision is not None:  # crosstune_bf16: bf16 autocast, as Trainer's bf16=True
        params = dataclasses.replace(params, mixed_precision=mixed_precision)
    model, config = load_transfer_model(workdir / "initial")
    apply_policy(model, saved_freeze(config), seed)  # freeze.depth, as the finetune stage applies it
    splits = {name: load_any_split(workdir / f"encoded/{name}.safetensors") for name in ("train", "validation", "test")}
    batching, level = TextBatching(params.batch_size, params.max_length), None
    train_split, validation_split = splits["train"], splits["validation"]
    plan = plan_cache(config, load_section(CacheParams, params_path), load_section(AugmentParams, params_path), params)
    started = time.perf_counter()
    if plan.cached:  # the frozen prefix computed once, as the cache stage does
        train_split, validation_split = (build_cached_split(model, plan.level, split, batching, 64, "float32", "cpu")
                                         for split in (train_split, validation_split))
        batching, level = CachedBatching(params.batch_size, "text"), plan.level
    cache_seconds = time.perf_counter() - started
    result = train(model, TrainingData(train_split, validation_split, batching, level), params, seed,
                   RunContext.single_process("cpu", params.mixed_precision))
    task = TASKS.get("token_classification")
    outputs = predict_outputs(model, splits["test"], TextBatching(64, params.max_length), "cpu")
    test = task.score(splits["test"].labels.tolist(), outputs, config["labels"])
    return {"epoch_seconds": result.epoch_seconds, "validation_entity_f1": [h["entity_f1"] for h in result.history],
            "best_epoch": result.best_epoch, "precision": result.precision, "cache_seconds": cache_seconds,
            "cached_level": plan.level, "test": test}


def run_trainer(workdir: Path, params_path: Path, seed: int, grouped: bool = False, bf16: bool = False) -> dict:
    import numpy as np
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from crosstune.config import FinetuneParams, load_section
    from crosstune.io import read_json

    params = load_section(FinetuneParams, params_path)
    labels = read_json(workdir / "prepared" / "labels.json")["labels"]
    index = {label: position for position, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(str(workdir / "backbone"))
    model = AutoModelForTokenClassification.from_pretrained(
        str(workdir / "backbone"), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index)

    def rows(split: str) -> tuple[list[dict], list[list[int | None]], list[list[str]]]:
        """The guide's tokenize_and_align_labels: truncated at max_length, -100 on special and later sub-tokens."""
        words, tags = _sentences(workdir, split)
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=params.max_length)
        out, word_ids = [], []
        for row, sentence_tags in enumerate(tags):
            ids, previous, aligned = encoded.word_ids(row), None, []
            for word in ids:
                aligned.append(-100 if word is None or word == previous else index[sentence_tags[word]])
                previous = word
            out.append({"input_ids": encoded["input_ids"][row], "attention_mask": encoded["attention_mask"][row],
                        "labels": aligned})
            word_ids.append(ids)
        return out, word_ids, tags

    def word_tags(logits: np.ndarray, word_ids: list[list[int | None]], tags: list[list[str]]) -> list[list[str]]:
        predicted = []
        for row, ids in enumerate(word_ids):
            words = ["O"] * len(tags[row])  # words truncation dropped stay O
            seen = set()
            for position, word in enumerate(ids):
                if word is not None and word not in seen:
                    words[word] = labels[int(np.argmax(logits[row][position]))]
                    seen.add(word)
            predicted.append(words)
        return predicted

    train_rows, _, _ = rows("train")
    validation_rows, validation_ids, validation_tags = rows("validation")
    timings: dict[str, list[float]] = {"epoch_seconds": [], "validation_entity_f1": []}

    class Timer(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            self.epoch_started = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            timings["epoch_seconds"].append(time.perf_counter() - self.epoch_started)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            timings["validation_entity_f1"].append(metrics["eval_entity_f1"])

    def compute_metrics(prediction):
        # evaluation keeps the dataset order unless grouped by length: map rows back by their labels' layout
        logits = prediction.predictions
        gold = [[labels[t] for t in row if t != -100] for row in prediction.label_ids]
        guessed = [[labels[int(np.argmax(logits[r][p]))] for p, t in enumerate(row) if t != -100]
                   for r, row in enumerate(prediction.label_ids)]
        return {"entity_f1": _scores(gold, guessed)["entity_f1"]}

    steps = -(-len(train_rows) // params.batch_size) * params.epochs
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="trainer-", dir=workdir), num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size, per_device_eval_batch_size=params.batch_size * 2,
        learning_rate=params.lr, weight_decay=params.weight_decay, lr_scheduler_type="linear",
        warmup_steps=int(params.warmup_ratio * steps), eval_strategy="epoch", save_strategy="epoch",
        save_total_limit=1, save_only_model=True, load_best_model_at_end=True, metric_for_best_model="entity_f1",
        logging_strategy="no", report_to="none", seed=seed, use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, optim="adamw_torch", train_sampling_strategy="group_by_length" if grouped else "random",
        bf16=bf16)
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=validation_rows,
                      data_collator=DataCollatorForTokenClassification(tokenizer), compute_metrics=compute_metrics,
                      callbacks=[Timer()])
    trainer.train()
    test_rows, test_ids, test_tags = rows("test")
    # the test split in its own order (Trainer.predict may group rows by length): the kept model, float32
    collator, best = DataCollatorForTokenClassification(tokenizer, return_tensors="pt"), trainer.model.eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(test_rows), 64):
            batch = collator([{k: v for k, v in row.items() if k != "labels"} for row in test_rows[start:start + 64]])
            logits.extend(best(**batch).logits.float().numpy())
    return {**timings, "precision": "bfloat16" if bf16 else "float32",
            "test": _scores(test_tags, word_tags(logits, test_ids, test_tags))}


def run_crf(workdir: Path, params_path: Path, seed: int) -> dict:
    from crosstune.evaluation.baselines import run_baseline

    words, tags = _sentences(workdir, "train")
    test_words, test_tags = _sentences(workdir, "test")
    started = time.perf_counter()
    predicted = run_baseline("crf", "token_classification", words, tags, test_words, seed)
    return {"fit_seconds": time.perf_counter() - started, "test": _scores(test_tags, predicted)}


def worker(tool: str, workdir: Path, params_path: Path, seed: int, out: Path) -> None:
    if tool.startswith("crosstune"):
        precision = "bf16" if tool.endswith("bf16") else None
        measure_contestant(lambda: run_crosstune(workdir, params_path, seed, precision), out)
    elif tool == "crf":
        measure_contestant(lambda: run_crf(workdir, params_path, seed), out)
    else:
        grouped = tool.endswith("bf16")
        measure_contestant(lambda: run_trainer(workdir, params_path, seed, grouped=grouped, bf16=grouped), out)


NO_BLOCKS = ("minilm-static",)  # static token embeddings: no attention blocks to freeze


def corpus_params(data: str, extra: dict) -> dict:
    """The example's params with ``extra`` laid over them, on corpus ``data``: ``ncbi`` (the example's own) or a
    folder under data/ner/ holding train.tsv and test.tsv (``bc2gm``)."""
    params = merge(default_params("examples/ner.yaml"), extra)
    if data != "ncbi":
        params["data"]["train"], params["data"]["test"] = (str(REPO / f"data/ner/{data}/{name}.tsv")
                                                           for name in ("train", "test"))
    return params


def _workdir(backbone: str, seed: int, size: int | None, data: str) -> tuple[Path, Path]:
    """Prepare, encode and attach for one backbone and seed (the seed fixes the validation carve and the head)."""
    params = corpus_params(data, {"base": {"seed": seed}, "backbone": {"name": backbone}})
    if backbone in NO_BLOCKS:  # the example freezes block 1; a backbone without blocks trains its embedding table
        params = merge(params, {"freeze": {"depth": 0}})
    work = Path(tempfile.mkdtemp(prefix=f"crosstune-ner-{backbone}-{seed}-"))
    if size:
        blocks = Path(params["data"]["train"]).read_text(encoding="utf-8").strip().split("\n\n")
        small = work / "train.tsv"
        small.write_text("\n\n".join(blocks[:size]) + "\n", encoding="utf-8")
        params["data"]["train"] = str(small)
    return work, prepare_workdir(work, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    contestant_arguments(parser, TOOLS, str(REPO / "bench/ner/results.json"))
    parser.add_argument("--backbones", default="minilm-l6")
    parser.add_argument("--data", default="ncbi", help="ncbi (data/ner/ncbi_disease) or a folder under data/ner/")
    parser.add_argument("--sizes", default="", help="learning curve: training sentences, e.g. 100,500")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.workdir), Path(args.params), args.seed, Path(args.result))
        return
    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    out = Path(args.out)
    results = load_results(out)
    done = done_runs(results, ("data", "backbone", "size", "seed", "tool"))
    plan = [(backbone, size, int(seed)) for backbone in args.backbones.split(",")
            for size in [None] + [int(size) for size in args.sizes.split(",") if size]
            for seed in args.seeds.split(",")]
    for number, (backbone, size, seed) in enumerate(plan):
        tools = [tool for tool in args.tools.split(",") if (args.data, backbone, size, seed, tool) not in done]
        if size:  # the learning curve: crosstune and the CRF
            tools = [tool for tool in tools if tool in ("crosstune", "crf")]
        if not tools:
            continue
        workdir, params_path = _workdir(backbone, seed, size, args.data)
        for tool in tools if number % 2 == 0 else tools[::-1]:  # alternate so no tool always runs warmer
            print(f"{args.data} {backbone} size={size or 'all'} seed={seed}: {tool} ...", flush=True)
            run = {"data": args.data, "backbone": backbone, "size": size, "seed": seed, "tool": tool,
                   **run_contestant(__file__, tool, workdir, params_path, seed)}
            record_run(results, out, "ner", results["runs"], run)


if __name__ == "__main__":
    main()
