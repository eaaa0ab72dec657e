"""The target tasks the benchmarks share: each a params set (params.yaml with an example laid over it, data paths
absolute) and, where the data is derived, the files it is written to.

- ``text``: params.yaml, drug-review sentiment (3 classes, imbalanced), MiniLM-L6;
- ``topic``: the same reviews labelled by condition (the 6 most frequent): topic, not sentiment;
- ``fashion``: examples/fashion.yaml, Fashion-MNIST product images, EfficientNet-Lite0;
- ``digits``: scikit-learn's 8x8 digits (upscaled to 32 px, seeded 300-image test split), the fashion recipe
  at 64 px without flips or crops; ``photo_digits``: bench/adaptation's digits blended onto photos;
- ``speech``: examples/speech.yaml, spoken digits of the Free Spoken Digit Dataset, speaker-disjoint test;
- ``speakers``: examples/speakers.yaml, who speaks on the same recordings (6 speakers).

``text``/``topic`` and ``speech``/``speakers`` are pairs on the same inputs whose right backbone should differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from workdir import REPO, default_params, merge

TASKS = {"text": None, "topic": None, "fashion": "examples/fashion.yaml", "digits": "examples/fashion.yaml",
         "photo_digits": "examples/fashion.yaml", "speech": "examples/speech.yaml",
         "speakers": "examples/speakers.yaml"}
MODALITIES = {"text": "text", "topic": "text", "fashion": "image", "digits": "image", "photo_digits": "image",
              "speech": "audio", "speakers": "audio"}
TOPICS = 6  # topic: the drug reviews' most frequent conditions in the training file, as the label
SMALL_IMAGES = {  # digits, photo-digits: the image recipe at 64 px, no flips or crops (they change a digit)
    "backbone": {"image_size": 64}, "augment": {"crop_scale_min": 1.0, "horizontal_flip": 0.0},
    "prepare": {"min_examples_per_class": 2}, "finetune": {"class_weights": "none"}}
DIGITS_TEST = 300  # scikit-learn digits: held-out test images (seeded), the rest train


def task_params(task: str, work: Path) -> dict:
    """params.yaml with the task's example laid over it, data paths absolute; the topic and digits tasks' data
    are written under ``work``."""
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    params = default_params(TASKS[task])
    if task == "topic":
        params["data"].update(topic_tables(work / "topic"))
        params["prepare"]["label_column"] = "condition"
    elif task in ("digits", "photo_digits"):
        params = merge(params, SMALL_IMAGES)
        folders = digit_folders(work / "digits")
        params["data"].update(folders[task])
    return params


def topic_tables(out: Path) -> dict[str, str]:
    """The drug reviews labelled by condition (topic), kept to the :data:`TOPICS` most frequent in training."""
    import pandas as pd

    frames = {name: pd.read_csv(REPO / "data" / "raw" / f"{name}.csv") for name in ("train", "test")}
    kept = frames["train"]["condition"].value_counts().index[:TOPICS]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in frames.items():
        paths[name] = str(out / f"{name}.csv")
        frame[frame["condition"].isin(kept)].to_csv(paths[name], index=False)
    return paths


def digit_folders(out: Path) -> dict[str, dict[str, str]]:
    """scikit-learn's digits (grey, upscaled to 32 px; seeded train/test split) and the photo-digits target
    of bench/adaptation/make_digits.py with its labels (its target pool and test set)."""
    import numpy as np
    from sklearn.datasets import load_digits

    sys.path.insert(0, str(REPO / "bench" / "adaptation"))
    from make_digits import make_digits, upscale, write_folder

    made = make_digits(out / "photo", seed=0)
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    images, labels = upscale(digits.images[order]), digits.target[order]
    grey = np.repeat(images[:, :, :, None], 3, axis=3)
    write_folder(out / "grey" / "test", grey[:DIGITS_TEST], labels[:DIGITS_TEST], "test")
    write_folder(out / "grey" / "train", grey[DIGITS_TEST:], labels[DIGITS_TEST:], "train")
    return {"digits": {"train": str(out / "grey" / "train"), "test": str(out / "grey" / "test")},
            "photo_digits": {"train": str(made["target_train"]), "test": str(made["target_test"])}}
