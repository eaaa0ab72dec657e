"""The recipe panel: on each task, the fine-tuning recipes and everything the guard compares them with, 3 seeds.

Per task the data is prepared and encoded once (split of base.seed 42); per seed, through the pipeline's own
stage functions: attach-head, cache, probe (the linear probe as a model), scratch (random initialisation),
then for each recipe finetune + evaluate with ``evaluate.guard: report`` (so evaluate scores the probe, the
scratch model and the baselines beside it):

- ``full``: full fine-tuning from attach_head's random head (``finetune.head_init: random``, the recipe up to now);
- ``lp_ft``: the same from the probe's fitted head (``finetune.head_init: probe``; Kumar et al. 2022);
- ``head_only``: the backbone frozen, the head trained by SGD (``freeze.depth: all``, ``head_lr`` 1e-2);
- ``fallback(R)``: what ``evaluate.guard: fallback`` exports after recipe R, the best on validation of R's
  fine-tuned model, the probe and the scratch model (computed from the validation metrics evaluate wrote).

Tasks: ``text`` (params.yaml: drug-review sentiment, MiniLM-L6), ``topic`` (the same reviews labelled by
condition, the 6 most frequent), ``fashion`` (examples/fashion.yaml: Fashion-MNIST, EfficientNet-Lite0),
``digits`` (scikit-learn's digits) and ``photo_digits`` (bench/adaptation's digits blended onto photos, with
their labels), both with the fashion recipe at 64 px without flips or crops, and ``speech``
(examples/speech.yaml: spoken digits, speaker-disjoint, Whisper tiny.en's encoder). Writes
bench/recipes/results.json; ``table.py`` prints the table.

    .venv/bin/python bench/recipes/run.py [--tasks text,fashion,speech] [--seeds 42,1,2]
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
from workdir import merge, prepare_workdir, record_run  # noqa: E402  (bench/workdir.py; also puts src/ on the path)

RECIPES = {"full": {"finetune": {"head_init": "random"}}, "lp_ft": {"finetune": {"head_init": "probe"}}}
HEAD_ONLY = {"freeze": {"depth": "all"}, "finetune": {"head_lr": 1.0e-2, "head_init": "random"},
             "evaluate": {"guard": "off"}}
KEPT = ("f1_macro", "accuracy")
PANEL = ("text", "topic", "fashion", "digits", "photo_digits", "speech")  # the panel's tasks (bench/tasks.py)


def task_params(task: str, work: Path) -> dict:
    """The task's params (bench/tasks.py) with the guard on (report)."""
    return merge(tasks.task_params(task, work), {"evaluate": {"guard": "report"}})


def _write(path: Path, params: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params))
    return str(path)


def run_seed(work: Path, params: dict, seed: int) -> dict:
    """Every model of one seed on the prepared ``work``; returns test and validation scores and seconds."""
    from crosstune.evaluation.guard import choose_export
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.probe import probe_stage
    from crosstune.pipeline.scratch import scratch_stage

    run = work / f"seed-{seed}"
    seeded = merge(params, {"base": {"seed": seed}})
    path = _write(run / "params.yaml", seeded)
    encoded, prepared = str(work / "encoded"), str(work / "prepared")
    initial, features, probe, scratch = (str(run / name) for name in ("initial", "features", "probe", "scratch"))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    attach_head_stage(str(work / "backbone"), prepared, initial, str(run / "freeze.json"), path)
    cache_stage(initial, encoded, features, path)
    seconds["attach_and_cache"] = time.perf_counter() - started
    started = time.perf_counter()
    probe_stage(initial, encoded, probe, str(run / "probe.json"), path, features)
    seconds["probe"] = time.perf_counter() - started
    started = time.perf_counter()
    scratch_stage(initial, encoded, scratch, path)
    seconds["scratch"] = time.perf_counter() - started
    result: dict = {"seed": seed, "seconds": seconds}
    for recipe, overrides in RECIPES.items():
        recipe_path = _write(run / recipe / "params.yaml", merge(seeded, overrides))
        started = time.perf_counter()
        finetune_stage(initial, encoded, str(run / recipe / "model"), str(run / recipe / "live"), recipe_path,
                       features, probe_dir=probe)
        seconds[recipe] = time.perf_counter() - started
        metrics = evaluate_stage(str(run / recipe / "model"), encoded, prepared, str(run / recipe / "eval.json"),
                                 str(run / recipe / "predictions.csv"), str(run / recipe / "misclassified.png"),
                                 recipe_path, initial, scratch, probe)
        result[recipe] = {key: metrics[key] for key in KEPT}
        result[f"{recipe}_validation_f1_macro"] = metrics["finetuned_validation_f1_macro"]
        for name in ("probe", "scratch"):
            result[name] = {key: metrics[f"{name}_{key}"] for key in KEPT}
            result[f"{name}_validation_f1_macro"] = metrics[f"{name}_validation_f1_macro"]
        for key, value in metrics.items():
            for metric in KEPT:
                if key.startswith("baseline_") and key.endswith(f"_{metric}") and "weighted" not in key:
                    result.setdefault(key[:-len(metric) - 1], {})[metric] = value
        validation = {"finetuned": metrics["finetuned_validation_f1_macro"],
                      "probe": metrics["probe_validation_f1_macro"],
                      "scratch": metrics["scratch_validation_f1_macro"]}
        chosen = choose_export(validation, "f1_macro")
        result[f"fallback({recipe})"] = {**(result[recipe] if chosen == "finetuned" else result[chosen]),
                                         "chose": chosen}
    head_path = _write(run / "head_only" / "params.yaml", merge(seeded, HEAD_ONLY))
    started = time.perf_counter()
    attach_head_stage(str(work / "backbone"), prepared, str(run / "head_only" / "initial"),
                      str(run / "head_only" / "freeze.json"), head_path)
    cache_stage(str(run / "head_only" / "initial"), encoded, str(run / "head_only" / "features"), head_path)
    finetune_stage(str(run / "head_only" / "initial"), encoded, str(run / "head_only" / "model"),
                   str(run / "head_only" / "live"), head_path, str(run / "head_only" / "features"))
    seconds["head_only"] = time.perf_counter() - started
    metrics = evaluate_stage(str(run / "head_only" / "model"), encoded, prepared, str(run / "head_only" / "eval.json"),
                             str(run / "head_only" / "predictions.csv"), str(run / "head_only" / "misclassified.png"),
                             head_path)
    result["head_only"] = {key: metrics[key] for key in KEPT}
    result["seconds"] = {key: round(value, 1) for key, value in seconds.items()}
    return result


def run(names: list[str], seeds: list[int], out: Path) -> None:
    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    results = json.loads(out.read_text()) if out.exists() else {}
    for task in names:
        work = Path(tempfile.mkdtemp(prefix=f"recipes-{task}-"))
        params = task_params(task, work)
        prepare_workdir(work, params, attach=False)
        runs = results.setdefault(task, {"runs": []})
        runs["params"] = tasks.TASKS[task] or "params.yaml"
        done = {entry["seed"] for entry in runs["runs"]}
        for seed in seeds:
            if seed in done:
                continue
            record_run(results, out, task, runs["runs"], run_seed(work, params, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(PANEL))
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--out", default=str(REPO / "bench/recipes/results.json"))
    args = parser.parse_args()
    run(args.tasks.split(","), [int(seed) for seed in args.seeds.split(",")], Path(args.out))


if __name__ == "__main__":
    main()
