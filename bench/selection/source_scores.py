"""LEEP and NCE beside LogME on the image tasks of run.py, scored on the same 500-image samples.

LEEP (Nguyen et al. 2020) and NCE (Tran et al. 2019) read a backbone's own ImageNet classifier, so only the
three EfficientNet-Lite candidates have them (tiny-cnn is random). This scores Lite0/1/2 with each and
compares the ranking with the fine-tuned test accuracy run.py measured (results.json: one seed, the
standard budget), without fine-tuning again. Output: bench/selection/source_scores.json.

    .venv/bin/python bench/selection/source_scores.py     # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from run import REPO, digits_folder, task_params

CANDIDATES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
SCORES = ["leep", "nce", "logme"]


def score_task(name: str, train: Path, test: Path, workdir: Path) -> dict:
    from scipy.stats import kendalltau

    from crosstune.config import load_section
    from crosstune.data.images import decode_images
    from crosstune.data.prepared import read_split
    from crosstune.pipeline.prepare import prepare_stage
    from crosstune.selection.candidates import sample_indices, score_candidates

    params_path = workdir / "params.yaml"
    params_path.write_text(yaml.safe_dump(task_params(name)), encoding="utf-8")
    prepare_stage(str(train), str(test), str(workdir / "prepared"), str(params_path))
    frame = read_split(workdir / "prepared", "train")
    rows = sample_indices(len(frame), 500, 0)  # run.py's sample
    labels = np.asarray(frame["label"].iloc[rows])
    sample = decode_images(frame["image"].iloc[rows].tolist(), 256)
    backbone = load_section("backbone", params_path)
    cache = workdir / "feature-cache"
    started = time.perf_counter()
    score_candidates(dataclasses.replace(backbone, score="logme"), CANDIDATES, "image", sample, labels, [], 0,
                     cache_dir=cache)
    extraction = time.perf_counter() - started
    finetuned = json.loads((Path(__file__).with_name("results.json")).read_text())[name]["finetuned"]
    accuracy = [finetuned[candidate]["accuracy"] for candidate in CANDIDATES]
    task = {"finetuned_accuracy": dict(zip(CANDIDATES, accuracy)), "extraction_seconds": round(extraction, 2)}
    for score in SCORES:
        started = time.perf_counter()
        result = score_candidates(dataclasses.replace(backbone, score=score), CANDIDATES, "image", sample, labels,
                                  [], 0, cache_dir=cache)
        values = [result.scores[candidate] for candidate in CANDIDATES]
        task[score] = {"scores": dict(zip(CANDIDATES, values)),
                       "kendall_tau_accuracy": float(kendalltau(values, accuracy).statistic),
                       "top1_hit_accuracy": bool(np.argmax(values) == np.argmax(accuracy)),
                       "seconds_after_extraction": round(time.perf_counter() - started, 2)}
        print(name, score, json.dumps(task[score]), flush=True)
    return task


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        digits_train, digits_test = digits_folder(scratch / "digits-images")
        for name, (train, test) in {"fashion": (REPO / "data/fashion/train", REPO / "data/fashion/test"),
                                    "digits": (digits_train, digits_test)}.items():
            (scratch / name).mkdir()
            results[name] = score_task(name, train, test, scratch / name)
    results["mean_kendall_tau_accuracy"] = {score: float(np.mean([results[task][score]["kendall_tau_accuracy"]
                                                                  for task in ("fashion", "digits")]))
                                            for score in SCORES}
    out = Path(__file__).with_name("source_scores.json")
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("mean Kendall tau (accuracy):", results["mean_kendall_tau_accuracy"])


if __name__ == "__main__":
    main()
