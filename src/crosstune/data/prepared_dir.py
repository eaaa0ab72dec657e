"""Reading the prepare stage's directory back: its splits, label map, modality and source domain.

Every later stage reads the prepared data through these, never by path arithmetic of its own.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crosstune.errors import DataError
from crosstune.io import read_json


def has_source(prepared_dir: str | Path) -> bool:
    """Whether the prepare stage wrote a labelled source domain."""
    return (Path(prepared_dir) / "source.csv").is_file()


def encoded_has_source(encoded_dir: str | Path) -> bool:
    """Whether the backbone stage encoded a (non-empty) source domain (``meta.json`` of the encoded splits)."""
    meta = Path(encoded_dir) / "meta.json"
    return bool(read_json(meta).get("source", False)) if meta.is_file() else False


def read_split(prepared_dir: str | Path, split: str) -> pd.DataFrame:
    """Read one prepared split (or ``source``) back with explicit dtypes (inputs as text; labels as the task
    reads them: names, or numbers; an empty label name marks an unlabelled target row)."""
    path = Path(prepared_dir) / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found; run the prepare stage first (dvc repro prepare).")
    from crosstune.modalities import MODALITIES
    from crosstune.tasks.registry import TASKS

    task, _ = read_label_info(prepared_dir)
    dtypes = {**{name: str for name in MODALITIES}, "label": TASKS.get(task).label_dtype}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False)


def read_label_info(prepared_dir: str | Path) -> tuple[str, list[str]]:
    """Return ``(task, labels)`` from the prepared ``labels.json``."""
    info = read_json(Path(prepared_dir) / "labels.json")
    return info["task"], list(info["labels"])


def read_input_column(prepared_dir: str | Path) -> str | None:
    """The column of the user's table that held the inputs (``prepare.text_column`` or its image/audio
    counterpart), recorded in the model so `crosstune predict` reads new tables the same way."""
    return read_json(Path(prepared_dir) / "labels.json").get("input_column")


def read_lowercase(prepared_dir: str | Path) -> bool:
    """Whether prepare lowercased the texts (``prepare.lowercase``): the model records it, so `crosstune predict`
    and an export's tokenizer lowercase new texts too."""
    path = Path(prepared_dir) / "params.json"
    return bool(read_json(path).get("lowercase", False)) if path.is_file() else False


def read_modality(prepared_dir: str | Path) -> str:
    """``text``, ``image`` or ``audio``: what the prepared data holds."""
    return read_json(Path(prepared_dir) / "labels.json").get("modality", "text")


SPLITS = ("train", "validation", "test")


UNLABELLED = -1  # encoded label of a target training row whose label is hidden (the unlabelled pool)
