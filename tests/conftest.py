"""Shared fixtures: synthetic target data, a params file for the tiny random BERT, and the
library-level pipeline run on them. No network, no pretrained weights."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

CLASS_WORDS = {
    "negative": ["terrible", "awful", "worse", "nausea", "useless", "headache"],
    "neutral": ["okay", "average", "unsure", "moderate", "mixed", "fine"],
    "positive": ["great", "excellent", "helped", "wonderful", "relief", "recommend"],
}
FILLER = ["the", "drug", "i", "took", "it", "for", "weeks", "and", "my", "doctor", "said", "was", "dose", "day"]


def make_texts(count_per_class: int, seed: int) -> list[tuple[str, str]]:
    """Short reviews whose class shows in a few indicative words among filler."""
    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(count_per_class):
            tokens = rng.choices(FILLER, k=rng.randint(6, 14)) + rng.choices(words, k=3)
            rng.shuffle(tokens)
            rows.append((" ".join(tokens), label))
    rng.shuffle(rows)
    return rows


def write_table(path: Path, rows: list[tuple[str, str]], text_column: str = "review",
                label_column: str = "rating") -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=[text_column, label_column])
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


TINY_PARAMS = {  # only what differs from the defaults (crosstune.config, equal to params.yaml)
    "data": {"train": "data/raw/train.csv", "test": "data/raw/test.csv", "source": "data/source"},
    "base": {"seed": 7, "device": "cpu", "num_threads": 1},
    "prepare": {"validation_fraction": 0.2},
    "backbone": {"name": "tiny-bert", "max_length": 32,
                 "tiny": {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
                          "vocab_size": 200}},
    "head": {"hidden_dim": 16},
    "finetune": {"lr": 0.003, "epochs": 3, "batch_size": 8, "max_length": 32, "log_every": 2},
    "cache": {"batch_size": 16},
    "evaluate": {"batch_size": 16, "guard": "off"},
}


def write_params(path: Path, overrides: dict | None = None) -> Path:
    """Write a complete params file: every section's defaults, TINY_PARAMS over them, then
    ``{"section": {"key": value}}`` overrides (DVC needs every key a stage lists to be in the file)."""
    from crosstune.config import SECTIONS, to_dict

    params = {"data": {}, **{section: to_dict(cls()) for section, cls in SECTIONS.items()}}
    for layer in (TINY_PARAMS, overrides or {}):
        for section, values in layer.items():
            params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def raw_data(tmp_path: Path) -> dict[str, Path]:
    """Train (30 per class) and test (10 per class) CSVs of synthetic reviews."""
    return {
        "train": write_table(tmp_path / "raw" / "train.csv", make_texts(30, seed=1)),
        "test": write_table(tmp_path / "raw" / "test.csv", make_texts(10, seed=2)),
    }


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.yaml")


@pytest.fixture
def attached(tmp_path: Path, raw_data: dict[str, Path], params_file: Path) -> dict[str, Path]:
    """Run prepare, backbone and attach-head through the library; return the output paths."""
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    paths = {
        "prepared": tmp_path / "data" / "prepared",
        "backbone": tmp_path / "models" / "backbone",
        "encoded": tmp_path / "data" / "encoded",
        "initial": tmp_path / "models" / "initial",
        "params": params_file,
    }
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(paths["prepared"]), str(params_file))
    backbone_stage(str(paths["prepared"]), str(paths["backbone"]), str(paths["encoded"]),
                   str(tmp_path / "metrics" / "backbone.json"), str(tmp_path / "metrics" / "selection.json"),
                   str(tmp_path / "metrics" / "selection.csv"), str(params_file))
    attach_head_stage(str(paths["backbone"]), str(paths["prepared"]), str(paths["initial"]),
                      str(tmp_path / "metrics" / "freeze.json"), str(params_file))
    return paths


COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def write_image_folder(root: Path, per_class: int, seed: int, side: int = 40) -> Path:
    """An ImageFolder of noisy colour squares, one colour per class: learnable by a tiny CNN."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, colour in COLOURS.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            noise = rng.integers(-40, 40, size=(side, side, 3))
            pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype("uint8")
            Image.fromarray(pixels, mode="RGB").save(folder / f"{label}_{seed}_{index}.png")
    return root
