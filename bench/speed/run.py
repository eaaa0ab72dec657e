"""crosstune vs Hugging Face Trainer: the same model, data and hyperparameters, per freeze depth.

For each freeze depth (0 = full fine-tuning, half the blocks, all = linear probe) both tools fine-tune
the same attached model (all-MiniLM-L6-v2 + mean pooling + linear head, same head initialisation)
on the embedded drug-review split with the finetune params of params.yaml (AdamW, lr, weight decay,
linear schedule with warm-up, class-balanced cross-entropy, batch size, epochs, max length). Each
run is its own subprocess (so peak memory is its own), and the order alternates between depths so
neither tool always runs on a warmer machine. Trainer is used the way its docs show: a dataset of
token ids, ``DataCollatorWithPadding``, evaluation every epoch, ``load_best_model_at_end`` on
macro-F1; crosstune runs its own loop with length-bucketed batches and, for frozen depths, the
frozen-prefix cache (its one-time cost reported separately and included in the totals).

Run with one command (writes bench/speed/results.json; `table.py` prints the README table):
    .venv/bin/python bench/speed/run.py [--epochs 3] [--depths 0,3,all] [--tools crosstune,trainer,trainer_grouped]
        [--copies 3]    # bench/scaling: the training split grown by seeded token-level copies
``trainer_grouped`` adds Trainer with ``train_sampling_strategy="group_by_length"`` (length-grouped
batches, off by default) as a third contestant, ``trainer_grouped_bf16`` that with ``bf16=True``
(Trainer's CPU bfloat16 autocast). Trainer trains the model as its config has it (MiniLM: attention
dropout 0.1, what a Trainer user gets); crosstune applies ``finetune.attention_dropout`` (default 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from workdir import prepare_workdir  # noqa: E402  (bench/workdir.py; also puts src/ on the path)


def _depth(text: str) -> int | str:
    return text if text == "all" else int(text)


def _model(workdir: Path, depth: int | str):
    from crosstune.freezing.policy import apply_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    model, config = load_transfer_model(workdir / "initial")
    apply_freeze(model, depth)
    config["freeze"] = {"depth": depth}
    return model, config


def _test_metrics(logits, labels, names) -> dict[str, float]:
    from crosstune.tasks.classification import classification_metrics

    return {key: value for key, value in
            classification_metrics(labels.tolist(), logits.argmax(-1).tolist(), names).items()
            if key in ("accuracy", "f1_macro")}


# crosstune with finetune.mixed_precision pinned (plain "crosstune" runs params.yaml's setting)
CROSSTUNE_PRECISIONS = {"crosstune_float32": "off", "crosstune_bf16": "bf16"}
TOOLS = ("crosstune", *CROSSTUNE_PRECISIONS, "trainer", "trainer_grouped", "trainer_grouped_bf16")


def run_crosstune(workdir: Path, depth: int | str, params_path: Path, mixed_precision: str | None = None) -> dict:
    import dataclasses

    from crosstune.config import (
        AugmentParams,
        CacheParams,
        FinetuneParams,
        load_section,
    )
    from crosstune.data.batching import TextBatching, load_any_split
    from crosstune.inference.outputs import predict_outputs
    from crosstune.prefix_cache.plan import plan_cache
    from crosstune.prefix_cache.store import CachedBatching, build_cached_split
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import RunContext

    params = load_section(FinetuneParams, params_path)
    if mixed_precision is not None:
        params = dataclasses.replace(params, mixed_precision=mixed_precision)
    model, config = _model(workdir, depth)
    train_split = load_any_split(workdir / "encoded/train.safetensors")
    validation_split = load_any_split(workdir / "encoded/validation.safetensors")
    test_split = load_any_split(workdir / "encoded/test.safetensors")
    batching, level, cache_seconds = TextBatching(params.batch_size, params.max_length), None, 0.0
    plan = plan_cache(config, load_section(CacheParams, params_path), load_section(AugmentParams, params_path), params)
    if plan.cached:
        started = time.perf_counter()
        train_split, validation_split = (build_cached_split(model, plan.level, split, batching, 64, "float32", "cpu")
                                         for split in (train_split, validation_split))
        cache_seconds = time.perf_counter() - started
        batching, level = CachedBatching(params.batch_size, "text"), plan.level
    result = train(model, TrainingData(train_split, validation_split, batching, level), params, 42,
                   RunContext.single_process("cpu", params.mixed_precision))
    logits = predict_outputs(model, test_split, TextBatching(64, params.max_length), "cpu")
    return {"epoch_seconds": result.epoch_seconds, "elapsed_at_epoch": [cache_seconds + t for t in result.elapsed_at_epoch],
            "validation_accuracy": [entry["accuracy"] for entry in result.history], "cache_seconds": cache_seconds,
            "test": _test_metrics(logits, test_split.labels, config["labels"]), "cached_level": plan.level,
            "precision": result.precision,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def run_trainer(workdir: Path, depth: int | str, params_path: Path, grouped: bool = False, bf16: bool = False) -> dict:
    import numpy as np
    import torch
    from transformers import (
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from crosstune.config import FinetuneParams, load_section
    from crosstune.data.text_encoding import load_split
    from crosstune.tasks.classification import classification_metrics
    from crosstune.training.losses import class_weight_tensor

    params = load_section(FinetuneParams, params_path)
    model, config = _model(workdir, depth)
    tokenizer = AutoTokenizer.from_pretrained(str(workdir / "initial"))
    splits = {name: load_split(workdir / f"encoded/{name}.safetensors") for name in ("train", "validation", "test")}
    weights = class_weight_tensor(params.class_weights, splits["train"].labels, len(config["labels"]))

    def rows(split):  # what a Trainer user has after tokenizing: ids per example, truncated at max_length
        out = []
        for ids, length, label in zip(split.input_ids, split.lengths.tolist(), split.labels.tolist()):
            kept = ids[: min(length, params.max_length)].tolist()
            out.append({"input_ids": kept, "attention_mask": [1] * len(kept), "labels": label})
        return out

    class WithLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, labels=None):
            logits = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            loss = torch.nn.functional.cross_entropy(logits, labels, weight=weights) if labels is not None else None
            return {"loss": loss, "logits": logits}

    timings: dict[str, list[float]] = {"epoch_seconds": [], "elapsed_at_epoch": [], "validation_accuracy": []}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.epoch_started = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            timings["epoch_seconds"].append(time.perf_counter() - self.epoch_started)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            timings["elapsed_at_epoch"].append(time.perf_counter() - self.started)
            timings["validation_accuracy"].append(metrics["eval_accuracy"])

    def compute_metrics(prediction):
        scores = classification_metrics(prediction.label_ids.tolist(), np.argmax(prediction.predictions, -1).tolist(),
                                        config["labels"])
        return {"accuracy": scores["accuracy"], "f1_macro": scores["f1_macro"]}

    steps = -(-len(splits["train"]) // params.batch_size) * params.epochs
    output = tempfile.mkdtemp(prefix="trainer-", dir=workdir)
    args = TrainingArguments(
        output_dir=output, num_train_epochs=params.epochs, per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size * 2, learning_rate=params.lr, weight_decay=params.weight_decay,
        lr_scheduler_type="linear", warmup_steps=int(params.warmup_ratio * steps), eval_strategy="epoch",
        save_strategy="epoch", save_total_limit=1, save_only_model=True, load_best_model_at_end=True,
        metric_for_best_model="f1_macro", logging_strategy="no", report_to="none", seed=42, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch",
        train_sampling_strategy="group_by_length" if grouped else "random", bf16=bf16)
    trainer = Trainer(model=WithLoss(model), args=args, train_dataset=rows(splits["train"]),
                      eval_dataset=rows(splits["validation"]), data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=compute_metrics, callbacks=[Timer()])
    trainer.train()
    prediction = trainer.predict(rows(splits["test"]))
    logits = torch.as_tensor(prediction.predictions)
    # the labels in prediction order: with group_by_length Trainer predicts in length-grouped order too
    # (transformers 5's _get_eval_sampler), so the split's own label order would pair rows wrongly
    labels = torch.as_tensor(prediction.label_ids)
    return {**timings, "cache_seconds": 0.0, "test": _test_metrics(logits, labels, config["labels"]),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def worker(tool: str, workdir: Path, depth: int | str, params_path: Path, out: Path) -> None:
    import torch

    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    started = time.perf_counter()
    if tool.startswith("crosstune"):
        result = run_crosstune(workdir, depth, params_path, CROSSTUNE_PRECISIONS.get(tool))
    else:
        result = run_trainer(workdir, depth, params_path, grouped=tool.startswith("trainer_grouped"),
                             bf16=tool.endswith("_bf16"))
    result["total_seconds"] = time.perf_counter() - started
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result, indent=1))


def time_to_reach(run: dict, target: float) -> float | None:
    for elapsed, accuracy in zip(run["elapsed_at_epoch"], run["validation_accuracy"]):
        if accuracy >= target - 1e-9:
            return elapsed
    return None


def summarise(depth: int | str, runs: dict[str, dict]) -> dict:
    ours = runs["crosstune"]
    ours_epoch = sum(ours["epoch_seconds"]) / len(ours["epoch_seconds"])
    summary = {"depth": depth, "crosstune_epoch_s": ours_epoch, "crosstune_cache_s": ours["cache_seconds"],
               "crosstune_total_s": ours["total_seconds"], "crosstune_peak_rss_mib": ours["peak_rss_mib"],
               "crosstune_test": ours["test"]}
    if "trainer" in runs:
        peer = runs["trainer"]
        peer_epoch = sum(peer["epoch_seconds"]) / len(peer["epoch_seconds"])
        target = min(max(ours["validation_accuracy"]), max(peer["validation_accuracy"]))
        ours_reach, peer_reach = time_to_reach(ours, target), time_to_reach(peer, target)
        summary.update({
            "trainer_epoch_s": peer_epoch, "epoch_speedup": peer_epoch / max(ours_epoch, 1e-9),
            "trainer_total_s": peer["total_seconds"], "total_speedup": peer["total_seconds"] / ours["total_seconds"],
            "target_validation_accuracy": target, "crosstune_time_to_target_s": ours_reach,
            "trainer_time_to_target_s": peer_reach,
            "time_to_target_speedup": (peer_reach / ours_reach) if ours_reach and peer_reach else None,
            "trainer_peak_rss_mib": peer["peak_rss_mib"], "trainer_test": peer["test"]})
    summary["crosstune_precision"] = ours.get("precision")
    for variant in CROSSTUNE_PRECISIONS:
        if variant in runs:
            epoch = sum(runs[variant]["epoch_seconds"]) / len(runs[variant]["epoch_seconds"])
            summary.update({f"{variant}_epoch_s": epoch, f"{variant}_total_s": runs[variant]["total_seconds"],
                            f"{variant}_peak_rss_mib": runs[variant]["peak_rss_mib"],
                            f"{variant}_test": runs[variant]["test"]})
    for variant, suffix in (("trainer_grouped", "grouped"), ("trainer_grouped_bf16", "grouped_bf16")):
        if variant in runs:
            epoch = sum(runs[variant]["epoch_seconds"]) / len(runs[variant]["epoch_seconds"])
            summary.update({f"trainer_{suffix}_epoch_s": epoch,
                            f"epoch_speedup_vs_{suffix}": epoch / max(ours_epoch, 1e-9),
                            f"trainer_{suffix}_total_s": runs[variant]["total_seconds"],
                            f"trainer_{suffix}_peak_rss_mib": runs[variant]["peak_rss_mib"],
                            f"trainer_{suffix}_test": runs[variant]["test"]})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--depths", default="0,3,all")
    parser.add_argument("--copies", type=int, default=0,
                        help="grow the training split: text_augment.copies seeded token-level copies of each review "
                             "(both tools train on the same encoded rows; validation and test stay real)")
    parser.add_argument("--out", default=str(REPO / "bench/speed/results.json"))
    parser.add_argument("--tools", default="crosstune,trainer",  # crosstune + any Trainer setups
                        help="add trainer_grouped for Trainer with train_sampling_strategy=group_by_length, "
                             "trainer_grouped_bf16 for that with bf16=True (CPU autocast), crosstune_float32 / "
                             "crosstune_bf16 for crosstune with finetune.mixed_precision off / bf16; of "
                             + ", ".join(TOOLS))
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--depth", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.workdir), _depth(args.depth), Path(args.params), Path(args.result))
        return
    tools = args.tools.split(",")
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown or "crosstune" not in tools or not any(tool.startswith("trainer") for tool in tools):
        parser.error(f"--tools: crosstune and at least one Trainer setup, of {', '.join(TOOLS)}; "
                     f"unknown: {', '.join(unknown) or 'none'}")

    import yaml

    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="crosstune-speed-"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"]["epochs"] = args.epochs
    params["text_augment"]["copies"] = args.copies
    params["data"] = {"train": str(REPO / "data/raw/train.csv"), "test": str(REPO / "data/raw/test.csv")}
    print(f"preparing {workdir} ...", flush=True)
    params_path = prepare_workdir(workdir, params)
    summary, raw = [], {}
    for position, depth in enumerate(args.depths.split(",")):
        order = tools if position % 2 == 0 else tools[::-1]
        runs = {}
        for tool in order:
            result = workdir / f"{tool}-{depth}.json"
            print(f"depth {depth}: {tool} ...", flush=True)
            subprocess.run([sys.executable, __file__, "--worker", tool, "--workdir", str(workdir), "--depth", depth,
                            "--params", str(params_path), "--result", str(result)], check=True)
            runs[tool] = json.loads(result.read_text())
        raw[depth] = runs
        summary.append(summarise(_depth(depth), runs))
        print(json.dumps(summary[-1], indent=1), flush=True)
    import torch
    import transformers

    report = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__},
        "command": "python bench/speed/run.py " + " ".join(sys.argv[1:]),
        "model": "all-MiniLM-L6-v2 + mean pooling + linear head",
        "data": f"drug reviews (data/raw), 509 train x (1 + {args.copies} token-level copies) / 90 / 379",
        "finetune": params["finetune"], "summary": summary, "runs": raw,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
