"""Transfer strategies side by side: head-only, full fine-tuning, gradual unfreezing + layer-wise decay,
L2-SP, BSS and LoRA, on the embedded text default (drug reviews, MiniLM-L6) and image default
(Fashion-MNIST subset, EfficientNet-Lite0), same epochs and batch size, 3 seeds each.

Every run goes through the pipeline's own stage functions (attach-head, cache, finetune, evaluate) with
a params file = params.yaml (text) or params.yaml + examples/fashion.yaml (images) + the strategy's
keys + the seed; prepare and backbone run once per dataset at base.seed 42, so every strategy and
seed sees the same split. Scores: test macro-F1 (and accuracy). Writes bench/strategies/results.json.

    .venv/bin/python bench/strategies/run.py [--datasets text,image] [--seeds 42,1,2] [--strategies ...]
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

from workdir import merge, prepare_workdir, run_seed  # noqa: E402  (bench/workdir.py; also puts src/ on the path)

# Same budget for all: the dataset's epochs and batch size. Rates are each method's usual ones.
STRATEGIES: dict[str, dict[str, dict]] = {
    "head_only": {"freeze": {"depth": "all"}, "finetune": {"head_lr": 1.0e-2}},
    "full": {"freeze": {"depth": 0}},
    "gradual_llrd": {"freeze": {"depth": 0},
                     "finetune": {"unfreeze": "gradual", "unfreeze_every": 8, "layer_decay": 0.8,
                                  "scheduler": "slanted_triangular", "head_lr": 1.0e-3}},
    "l2sp": {"freeze": {"depth": 0}, "finetune": {"l2sp": 0.01}},
    "bss": {"freeze": {"depth": 0}, "finetune": {"bss": 0.001, "bss_k": 1}},
    "lora": {"freeze": {"depth": 0, "lora_r": 8, "lora_alpha": 16, "lora_targets": ["query", "value"]},
             "finetune": {"lr": 5.0e-4, "head_lr": 1.0e-3}},
}
IMAGE_OVERRIDES = {  # images: per-dataset rates of the fashion example (lr 1e-3), LoRA is for transformers
    "head_only": {"finetune": {"head_lr": 1.0e-2}},
    "gradual_llrd": {"finetune": {"head_lr": 1.0e-2}},
}


def dataset_params(name: str) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if name == "image":
        params = merge(params, yaml.safe_load((REPO / "examples/fashion.yaml").read_text()))
        params["evaluate"]["baselines"] = ["majority"]
    else:
        params["evaluate"]["baselines"] = ["majority"]
    for key in ("train", "test"):
        params["data"][key] = str(REPO / params["data"][key])
    return params


def run(datasets: list[str], seeds: list[int], strategies: list[str], out: Path) -> None:
    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    results = json.loads(out.read_text()) if out.exists() else {}
    for dataset in datasets:
        work = Path(tempfile.mkdtemp(prefix=f"strategies-{dataset}-"))
        params = dataset_params(dataset)
        prepare_workdir(work, params, attach=False)
        for strategy in strategies:
            if dataset == "image" and strategy == "lora":
                results.setdefault(dataset, {})[strategy] = {"skipped": "LoRA adapters are for transformer backbones"}
                out.write_text(json.dumps(results, indent=1) + "\n")
                continue
            overrides = merge(STRATEGIES[strategy], IMAGE_OVERRIDES.get(strategy, {})) if dataset == "image" \
                else STRATEGIES[strategy]
            scores = []
            for seed in seeds:
                run_dir = work / f"{strategy}-{seed}"
                run_params = merge(merge(params, overrides), {"base": {"seed": seed}})
                metrics, seconds = run_seed(work, run_dir, run_params)
                scores.append({"seed": seed, "f1_macro": round(metrics["f1_macro"], 4),
                               "accuracy": round(metrics["accuracy"], 4),
                               "trainable_parameters": json.loads((run_dir / "freeze.json").read_text())
                               ["trainable_parameters"],
                               "seconds": round(seconds, 1)})
                print(dataset, strategy, scores[-1], flush=True)
            f1 = [score["f1_macro"] for score in scores]
            accuracy = [score["accuracy"] for score in scores]
            results.setdefault(dataset, {})[strategy] = {
                "overrides": overrides, "runs": scores,
                "f1_macro_mean": round(statistics.mean(f1), 4), "f1_macro_std": round(statistics.stdev(f1), 4),
                "accuracy_mean": round(statistics.mean(accuracy), 4),
                "accuracy_std": round(statistics.stdev(accuracy), 4)}
            out.write_text(json.dumps(results, indent=1) + "\n")
            print(dataset, strategy, results[dataset][strategy]["f1_macro_mean"], "+-",
                  results[dataset][strategy]["f1_macro_std"], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="text,image")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", default=str(REPO / "bench/strategies/results.json"))
    args = parser.parse_args()
    run(args.datasets.split(","), [int(seed) for seed in args.seeds.split(",")], args.strategies.split(","),
        Path(args.out))


if __name__ == "__main__":
    main()
