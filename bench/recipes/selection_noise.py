"""How should the epoch (or weights) a run keeps be chosen when validation is small? The text default's
validation split has 90 reviews (8 neutral): one review moves its macro-F1 by several points.

Per task of the recipe panel (``run.py``'s tasks and params) and seed, one fine-tuning run (``--head-init``
random or probe) through the library's own ``train``, on the frozen-prefix cache where the panel's finetune
uses one, with a callback that after every epoch also scores the test split (never used for any choice)
and keeps a copy of the weights. Since which epoch is kept does not change the training itself, one run
serves every rule. Then each rule picks, from validation only:

- ``best_f1``: the epoch of best validation macro-F1 (``finetune.select_metric: f1_macro``, the default);
- ``best_loss``: the epoch of lowest validation loss (``select_metric: loss``);
- ``smoothed_f1``: the epoch of best validation macro-F1 averaged with its neighbours (window 3;
  ``finetune.select_window: 3``, the default since this study);
- ``last``: the last epoch (no choice at all);
- ``average_last_2`` / ``average_all``: the mean of the last 2 / all epochs' weights (Izmailov et al. 2018,
  "Averaging Weights Leads to Wider Optima and Better Generalization", https://arxiv.org/abs/1803.05407);
- ``oracle``: the epoch of best *test* macro-F1 (the ceiling; not a rule).

Reported per rule: test macro-F1 mean and standard deviation over seeds, the points lost against the
oracle, and ``fallback``: what ``evaluate.guard: fallback`` would export with that rule, the best on
validation of the rule's epoch, the seed's probe and scratch model (their validation and test macro-F1
from the panel's ``results.json``; the probe is fitted in closed form, so no rule touches it).
Writes bench/recipes/selection_noise.json, one entry per task.

    .venv/bin/python bench/recipes/selection_noise.py [--tasks text,topic] [--seeds 42,1,2]
        [--head-init random|probe] [--lr 1e-5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PANEL as TASKS  # noqa: E402  (bench/recipes/run.py: the panel's tasks)
from run import task_params  # noqa: E402
from workdir import merge, prepare_workdir  # noqa: E402  (bench/workdir.py; also puts src/ on the path)

PANEL = Path(__file__).resolve().parent / "results.json"


def _test_f1(model, split, batching, labels) -> float:
    from crosstune.inference.outputs import predict_outputs, score_outputs

    return score_outputs(predict_outputs(model, split, batching, "cpu"), split, "classification", labels,
                         per_class=False)["f1_macro"]


def run_seed(work: Path, params: dict, seed: int, head_init: str, lr: float | None) -> dict:
    """One run; every rule's choice and its test macro-F1."""
    import torch

    from crosstune.config import AugmentParams, BaseParams, FinetuneParams, load_section
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared_dir import encoded_has_source
    from crosstune.freezing.policy import apply_policy
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.finetune import _cached_inputs
    from crosstune.pipeline.probe import probe_stage
    from crosstune.prefix_cache.store import CachedBatching
    from crosstune.runtime import setup
    from crosstune.training.callbacks import TrainingCallback
    from crosstune.training.epoch_selection import smoothed as smoothed_value
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import RunContext
    from crosstune.transfer_model.settings import saved_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    run = work / f"seed-{seed}"
    run.mkdir(parents=True)
    path = run / "params.yaml"
    finetune_overrides = {"head_init": head_init, **({"lr": lr} if lr else {})}
    path.write_text(yaml.safe_dump(merge(params, {"base": {"seed": seed}, "finetune": finetune_overrides})))
    attach_head_stage(str(work / "backbone"), str(work / "prepared"), str(run / "initial"), str(run / "freeze.json"),
                      str(path))
    cache_stage(str(run / "initial"), str(work / "encoded"), str(run / "features"), str(path))
    probe_stage(str(run / "initial"), str(work / "encoded"), str(run / "probe"), str(run / "probe.json"), str(path),
                str(run / "features"))
    base, finetune = load_section(BaseParams, str(path)), load_section(FinetuneParams, str(path))
    augment = load_section(AugmentParams, str(path))
    setup(base)
    start = run / ("probe" if head_init == "probe" else "initial")
    model, config = load_transfer_model(start)
    apply_policy(model, saved_freeze(config), base.seed)
    splits = {name: load_any_split(work / "encoded" / f"{name}.safetensors")
              for name in ("train", "validation", "test")}
    has_source = encoded_has_source(str(work / "encoded"))
    cached = _cached_inputs(str(run / "features"), config, finetune, augment, has_source)
    level = None
    if cached is not None:  # as the finetune stage trains (the test split is scored through the whole model)
        level, (splits["train"], splits["validation"]) = cached
        batching = CachedBatching(finetune.batch_size, model.modality)
    else:
        batching = batching_for(config, finetune.batch_size, finetune.max_length, augment)
    test_batching = batching_for(config, finetune.batch_size, finetune.max_length)
    source = load_any_split(work / "encoded" / "source.safetensors") if has_source else None
    labels = config["labels"]
    tests: list[float] = []
    snapshots: list[dict[str, torch.Tensor]] = []

    class AfterEpoch(TrainingCallback):
        def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
            tests.append(_test_f1(model, splits["test"], test_batching, labels))
            snapshots.append({key: value.detach().clone() for key, value in model.state_dict().items()})

    data = TrainingData(splits["train"], splits["validation"], batching, level, source)
    result = train(model, data, finetune, base.seed, RunContext.single_process("cpu", finetune.mixed_precision),
                   callbacks=[AfterEpoch()])
    f1 = [row["f1_macro"] for row in result.history]
    loss = [row["loss"] for row in result.history]
    smoothed = [smoothed_value(f1, epoch, 1) for epoch in range(1, len(f1) + 1)]  # train's rule, window 3
    chosen = {"best_f1": f1.index(max(f1)), "best_loss": loss.index(min(loss)),
              "smoothed_f1": smoothed.index(max(smoothed)), "last": len(f1) - 1, "oracle": tests.index(max(tests))}
    rules = {name: {"epoch": index + 1, "test_f1_macro": tests[index], "validation_f1_macro": f1[index]}
             for name, index in chosen.items()}
    for name, kept in (("average_last_2", snapshots[-2:]), ("average_all", snapshots)):
        averaged = {key: (torch.stack([s[key].float() for s in kept]).mean(0).to(kept[0][key].dtype)
                          if kept[0][key].is_floating_point() else kept[-1][key]) for key in kept[0]}
        model.load_state_dict(averaged)
        rules[name] = {"epochs": len(kept), "test_f1_macro": _test_f1(model, splits["test"], test_batching, labels)}
    return {"seed": seed, "validation_f1_macro": f1, "validation_loss": loss, "test_f1_macro": tests, "rules": rules}


def fallback(rule: dict, panel_run: dict) -> dict:
    """What the guard's fallback exports beside a rule's epoch: the best on validation of it, the probe and the
    scratch model of the panel's run for the same task and seed (ties keep the fine-tuned model, as
    :func:`crosstune.evaluation.guard.choose_export` does)."""
    from crosstune.evaluation.guard import choose_export

    validation = {"finetuned": rule["validation_f1_macro"],
                  "probe": panel_run["probe_validation_f1_macro"],
                  "scratch": panel_run["scratch_validation_f1_macro"]}
    chose = choose_export(validation, "f1_macro")
    test = rule["test_f1_macro"] if chose == "finetuned" else panel_run[chose]["f1_macro"]
    return {"chose": chose, "test_f1_macro": test}


def summarise(runs: list[dict], panel_runs: dict[int, dict]) -> dict:
    """Per rule: test macro-F1 mean and std over seeds, points under the oracle, and the fallback's."""
    summary = {}
    for rule in runs[0]["rules"]:
        values = [entry["rules"][rule]["test_f1_macro"] for entry in runs]
        oracle = [entry["rules"]["oracle"]["test_f1_macro"] for entry in runs]
        row = {"test_f1_macro_mean": round(statistics.mean(values), 4),
               "test_f1_macro_std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
               "points_below_oracle": round(100 * statistics.mean(o - v for o, v in zip(oracle, values)), 2)}
        if "validation_f1_macro" in runs[0]["rules"][rule] and all(entry["seed"] in panel_runs for entry in runs):
            exported = [fallback(entry["rules"][rule], panel_runs[entry["seed"]]) for entry in runs]
            tests = [item["test_f1_macro"] for item in exported]
            row["fallback"] = {"test_f1_macro_mean": round(statistics.mean(tests), 4),
                               "test_f1_macro_std": round(statistics.stdev(tests), 4) if len(tests) > 1 else 0.0,
                               "chose": [item["chose"] for item in exported]}
        summary[rule] = row
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="text", help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--head-init", default="random", choices=("random", "probe"))
    parser.add_argument("--lr", type=float, default=None, help="finetune.lr (default: the task's)")
    parser.add_argument("--out", default=str(REPO / "bench/recipes/selection_noise.json"))
    args = parser.parse_args()
    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    panel = json.loads(PANEL.read_text()) if PANEL.exists() else {}
    name = f"head_init_{args.head_init}" + (f"_lr_{args.lr:g}" if args.lr else "")
    for task in args.tasks.split(","):
        if task not in TASKS:
            raise SystemExit(f"--tasks: unknown task {task!r}; valid: {', '.join(TASKS)}")
        runs = results.setdefault(task, {}).setdefault(name, {"runs": []})
        seeds = [int(seed) for seed in args.seeds.split(",")]
        if any(seed not in {entry["seed"] for entry in runs["runs"]} for seed in seeds):
            work = Path(tempfile.mkdtemp(prefix=f"selection-noise-{task}-"))
            params = task_params(task, work)
            prepare_workdir(work, params, attach=False)
            for seed in seeds:
                if any(entry["seed"] == seed for entry in runs["runs"]):
                    continue
                runs["runs"].append(run_seed(work, params, seed, args.head_init, args.lr))
                print(task, json.dumps(runs["runs"][-1]["rules"]), flush=True)
                out.write_text(json.dumps(results, indent=1) + "\n")
        panel_runs = {entry["seed"]: entry for entry in panel.get(task, {}).get("runs", [])}
        runs["summary"] = summarise(runs["runs"], panel_runs)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(task, json.dumps(runs["summary"], indent=1))


if __name__ == "__main__":
    main()
