"""How the default recipe in params.yaml was chosen: a few finetune settings x seeds on the
embedded drug-review default, scored on the test split. Results go to bench/recipe_sweep.json.

Run after `dvc repro backbone` (it reuses data/encoded and models/backbone):
    .venv/bin/python bench/recipe_sweep.py
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from crosstune.config import FinetuneParams, load_section
from crosstune.data.batching import TextBatching
from crosstune.data.text_encoding import load_split
from crosstune.freezing.policy import apply_freeze
from crosstune.inference.outputs import predict_outputs
from crosstune.logging_setup import configure_logging
from crosstune.runtime import seed_everything
from crosstune.tasks.classification import classification_metrics
from crosstune.tasks.registry import TASKS
from crosstune.training.loop import TrainingData, train
from crosstune.training.run_context import RunContext
from crosstune.transfer_model.modules import build_transfer_model

RECIPES = {
    "full_lr1e-4_4ep": ({"lr": 1e-4, "epochs": 4}, 0),
    "depth2_lr1e-4_5ep": ({"lr": 1e-4, "epochs": 5}, 2),
    "full_lr5e-5_5ep": ({"lr": 5e-5, "epochs": 5}, 0),
}
SEEDS = (42, 1, 2)


def main() -> None:
    configure_logging("WARNING")
    from transformers import AutoModel

    torch.set_num_threads(2)
    finetune = load_section(FinetuneParams)
    encoded = {name: load_split(Path("data/encoded") / f"{name}.safetensors") for name in ("train", "validation", "test")}
    labels = json.loads(Path("data/prepared/labels.json").read_text())["labels"]
    wanted = sys.argv[1:] or list(RECIPES)
    results = {}
    for recipe in wanted:
        overrides, depth = RECIPES[recipe]
        params = dataclasses.replace(finetune, **overrides)
        scores = []
        for seed in SEEDS:
            seed_everything(seed)
            model = build_transfer_model(AutoModel.from_pretrained("models/backbone"), task="classification",
                                         labels=labels, head_type="linear", pooling="mean", dropout=0.1,
                                         hidden_dim=256, seed=seed)
            apply_freeze(model, depth)
            started = time.perf_counter()
            train(model, TrainingData(encoded["train"], encoded["validation"],
                                      TextBatching(params.batch_size, params.max_length)),
                  params, seed, RunContext.single_process("cpu", params.mixed_precision))
            batching = TextBatching(64, params.max_length)
            predicted, _ = TASKS.get("classification").predictions(predict_outputs(model, encoded["test"], batching,
                                                                                   "cpu"))
            f1 = classification_metrics(encoded["test"].labels.tolist(), predicted, labels)["f1_macro"]
            scores.append({"seed": seed, "test_f1_macro": round(f1, 4), "seconds": round(time.perf_counter() - started, 1)})
            print(recipe, scores[-1], flush=True)
        values = [score["test_f1_macro"] for score in scores]
        results[recipe] = {"runs": scores, "mean": round(statistics.mean(values), 4),
                           "std": round(statistics.stdev(values), 4)}
        print(recipe, results[recipe]["mean"], "+-", results[recipe]["std"], flush=True)
    out = Path("bench/recipe_sweep.json")
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
