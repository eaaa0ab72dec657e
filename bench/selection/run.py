"""Does the transferability score rank backbones the way fine-tuning does?

For three target tasks (drug reviews: text; Fashion-MNIST and scikit-learn digits: images) and four
candidate backbones each, this scores every candidate's frozen features on the training split
(LogME, H-score, linear probe) and fine-tunes every candidate with one fixed budget, then reports per
task the Kendall tau between each score's ranking and the fine-tuned test accuracy ranking, whether the
top-scored candidate is the best fine-tuned one, and the time to score all candidates as a fraction of
the time to fine-tune one. Results: bench/selection/results.json and the table in README.md.

    .venv/bin/python bench/selection/run.py            # standard budget, about 15 minutes on 2 CPU cores
    .venv/bin/python bench/selection/run.py short      # the 2-epoch budget, about 9 minutes
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

TEXT_CANDIDATES = ["minilm-l6", "minilm-l6@3", "minilm-l6@1", "tiny-bert"]
IMAGE_CANDIDATES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "tiny-cnn"]
SCORES = ["logme", "hscore", "linear_probe"]


def digits_folder(root: Path) -> tuple[Path, Path]:
    """scikit-learn's 8x8 digits as an ImageFolder, 70/30 stratified split (seed 0)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype("uint8")
    train, test = train_test_split(np.arange(len(images)), test_size=0.3, random_state=0, stratify=digits.target)
    for split, rows in (("train", train), ("test", test)):
        for row in rows:
            folder = root / split / str(digits.target[row])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[row], mode="L").save(folder / f"{row:04d}.png")
    return root / "train", root / "test"


BUDGETS = {
    # 2 epochs at the learning rates of the defaults, kept for the record.
    "short": {"epochs": 2, "image_lr": 1e-3},
    # 4 epochs, a gentler rate for the CNNs (the README's main table).
    "standard": {"epochs": 4, "image_lr": 3e-4},
}
BUDGET = BUDGETS["standard"]


def task_params(name: str) -> dict:
    common = {"base": {"seed": 0, "device": "cpu", "num_threads": 0},
              "evaluate": {"batch_size": 128, "baselines": ["majority"]}, "augment": {}}
    if name == "drug_reviews":
        return {**common, "prepare": {"text_column": "review", "label_column": "rating"},
                "backbone": {"max_length": 128, "selection_samples": 500},
                "freeze": {"depth": 0}, "head": {"type": "linear", "pooling": "mean"},
                "finetune": {"lr": 1e-4, "epochs": BUDGET["epochs"], "batch_size": 16, "max_length": 128,
                             "class_weights": "balanced"}}
    size = 112 if name == "fashion" else 64
    return {**common, "prepare": {"validation_fraction": 0.1, "min_image_size": 8},
            "backbone": {"weights": "DEFAULT", "image_size": size, "selection_samples": 500},
            "freeze": {"depth": 0}, "head": {"type": "linear"},
            "finetune": {"lr": BUDGET["image_lr"], "epochs": BUDGET["epochs"], "batch_size": 32, "scheduler": "cosine",
                         "class_weights": "none"}}


def run_task(name: str, train: Path, test: Path, candidates: list[str], workdir: Path) -> dict:
    from crosstune.config import load_section
    from crosstune.data.images import decode_images
    from crosstune.data.prepared import read_split
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.prepare import prepare_stage
    from crosstune.selection.candidates import sample_indices, score_candidates

    params = task_params(name)
    params_path = workdir / "params.yaml"
    params_path.write_text(yaml.safe_dump(params), encoding="utf-8")
    prepared = workdir / "prepared"
    prepare_stage(str(train), str(test), str(prepared), str(params_path))
    frame = read_split(prepared, "train")
    modality = "image" if "image" in frame else "text"
    rows = sample_indices(len(frame), 500, 0)
    labels = np.asarray(frame["label"].iloc[rows])
    sample = (frame["text"].iloc[rows].tolist() if modality == "text"
              else decode_images(frame["image"].iloc[rows].tolist(), 256))
    texts = frame["text"].tolist() if modality == "text" else []
    backbone = load_section("backbone", params_path)
    import dataclasses

    scores, scoring_seconds = {}, {}
    cache = workdir / "feature-cache"
    started = time.perf_counter()  # a first pass extracts (and caches) every candidate's features
    score_candidates(dataclasses.replace(backbone, score="logme"), candidates, modality, sample, labels, texts, 0,
                     cache_dir=cache)
    extraction = time.perf_counter() - started
    for score in SCORES:
        started = time.perf_counter()
        result = score_candidates(dataclasses.replace(backbone, score=score), candidates, modality, sample, labels,
                                  texts, 0, cache_dir=cache)
        scores[score] = result.scores
        scoring_seconds[score] = extraction + time.perf_counter() - started
    finetuned, finetune_seconds = {}, {}
    for candidate in candidates:
        run = workdir / candidate.replace("@", "_at_")
        params["backbone"]["name"] = candidate
        params_path.write_text(yaml.safe_dump(params), encoding="utf-8")
        started = time.perf_counter()
        backbone_stage(str(prepared), str(run / "backbone"), str(run / "encoded"), str(run / "backbone.json"),
                       str(run / "selection.json"), str(run / "selection.csv"), str(params_path))
        attach_head_stage(str(run / "backbone"), str(prepared), str(run / "initial"), str(run / "freeze.json"),
                          str(params_path))
        finetune_stage(str(run / "initial"), str(run / "encoded"), str(run / "finetuned"), str(run / "live"),
                       str(params_path))
        metrics = evaluate_stage(str(run / "finetuned"), str(run / "encoded"), str(prepared), str(run / "eval.json"),
                                 str(run / "predictions.csv"), str(run / "misclassified.png"), str(params_path))
        finetune_seconds[candidate] = time.perf_counter() - started
        finetuned[candidate] = {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]}
        print(f"{name} {candidate}: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['f1_macro']:.4f} "
              f"in {finetune_seconds[candidate]:.0f} s", flush=True)
    return {"scores": scores, "scoring_seconds": scoring_seconds, "finetuned": finetuned,
            "finetune_seconds": finetune_seconds}


def summarise(task: dict) -> dict:
    """Per score: Kendall tau against fine-tuned test accuracy and macro-F1, top-1 hits, and the time to
    score all candidates (feature extraction included) over the time to fine-tune one (mean and largest)."""
    from scipy.stats import kendalltau

    candidates = list(task["finetuned"])
    summary = {}
    mean_finetune = statistics.mean(task["finetune_seconds"].values())
    largest_finetune = max(task["finetune_seconds"].values())
    for score, values in task["scores"].items():
        ranked = [values[c] for c in candidates]
        entry = {}
        for metric in ("accuracy", "f1_macro"):
            outcome = [task["finetuned"][c][metric] for c in candidates]
            entry[f"kendall_tau_{metric}"] = float(kendalltau(ranked, outcome).statistic)
            entry[f"top1_hit_{metric}"] = bool(np.argmax(ranked) == np.argmax(outcome))
        entry["score_time_over_mean_finetune"] = task["scoring_seconds"][score] / mean_finetune
        entry["score_time_over_largest_finetune"] = task["scoring_seconds"][score] / largest_finetune
        summary[score] = entry
    return summary


def main() -> None:
    global BUDGET
    budget = sys.argv[1] if len(sys.argv) > 1 else "standard"
    BUDGET = BUDGETS[budget]
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        digits_train, digits_test = digits_folder(scratch / "digits-images")
        tasks = {
            "drug_reviews": (REPO / "data/raw/train.csv", REPO / "data/raw/test.csv", TEXT_CANDIDATES),
            "fashion": (REPO / "data/fashion/train", REPO / "data/fashion/test", IMAGE_CANDIDATES),
            "digits": (digits_train, digits_test, IMAGE_CANDIDATES),
        }
        for name, (train, test, candidates) in tasks.items():
            workdir = scratch / name
            workdir.mkdir()
            results[name] = run_task(name, train, test, candidates, workdir)
            results[name]["summary"] = summarise(results[name])
            print(name, "scores", json.dumps(results[name]["scores"]), flush=True)
            print(name, json.dumps(results[name]["summary"]), flush=True)
    tasks = list(results)
    for score in SCORES:
        for metric in ("accuracy", "f1_macro"):
            taus = [results[name]["summary"][score][f"kendall_tau_{metric}"] for name in tasks]
            results.setdefault("mean_kendall_tau", {}).setdefault(score, {})[metric] = statistics.mean(taus)
    results["budget"] = {"name": budget, **BUDGET}
    out = Path(__file__).with_name("results.json" if budget == "standard" else f"results_{budget}.json")
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("mean Kendall tau:", results["mean_kendall_tau"])


if __name__ == "__main__":
    main()
