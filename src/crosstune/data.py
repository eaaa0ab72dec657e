"""prepare-target-data: read, validate, normalise, deduplicate and split the target-domain table.

Outputs (in ``out_dir``): ``train.csv``, ``validation.csv``, ``test.csv`` with columns
``text`` and ``label``, ``labels.json`` (sorted label names: index i is class i) and
``summary.json``. Tokenising waits for the backbone stage, which knows the tokenizer.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from crosstune.config import PrepareParams
from crosstune.errors import DataError
from crosstune.io import atomic_directory, write_csv, write_json

logger = logging.getLogger(__name__)

READERS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}
SPLITS = ("train", "validation", "test")
_WHITESPACE = re.compile(r"\s+")
_MAX_ROWS_IN_ERROR = 5


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet file into a DataFrame, with errors naming the file and the fix."""
    path = Path(path)
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(READERS)}.")
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path given to the prepare stage in dvc.yaml.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one example.")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                                na_values=[""])
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: cannot be parsed as {kind} ({error}); fix the file's format.") from error
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows; add examples.")
    return frame


def normalise_text(text: str, lowercase: bool = False) -> str:
    """Undo HTML escapes, fold Unicode look-alikes, drop wrapping quotes and collapse white space."""
    text = unicodedata.normalize("NFKC", html.unescape(text))
    text = _WHITESPACE.sub(" ", text).strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text.lower() if lowercase else text


def _rows(mask: pd.Series) -> str:
    """Human row numbers (1 = first row after the header) of the True entries, a few at most."""
    rows = [int(i) + 1 for i in mask[mask].index[:_MAX_ROWS_IN_ERROR]]
    more = int(mask.sum()) - len(rows)
    return ", ".join(map(str, rows)) + (f" and {more} more" if more > 0 else "")


def _require_values(frame: pd.DataFrame, column: str, what: str, fix: str, path: Path) -> pd.Series:
    """``frame[column]``, or a `DataError` naming the rows where it is empty or missing."""
    values = frame[column]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        raise DataError(
            f"{path}: empty or missing {what} in column {column!r} at row(s) {_rows(empty)} "
            f"(row 1 = first row after the header); {fix}."
        )
    return values


def load_examples(path: str | Path, params: PrepareParams) -> pd.DataFrame:
    """Read one input and return a clean frame (``text`` or ``image``, and ``label``), or raise `DataError`.

    A directory is an ImageFolder layout (one sub-folder per class); a table holds either a text column
    (``prepare.text_column``) or a column of image paths (``prepare.image_column``, relative to the table).
    """
    path = Path(path)
    if path.is_dir():
        from crosstune.images import list_image_folder

        return _check_images(pd.DataFrame(list_image_folder(path, params.min_image_size), columns=["image", "label"]),
                             path, params)
    frame = read_table(path).reset_index(drop=True)
    if params.text_column not in frame.columns and params.image_column in frame.columns:
        return _load_image_table(frame, path, params)
    missing = [column for column in (params.text_column, params.label_column) if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; the file has {list(frame.columns)}. "
            f"Set prepare.text_column (or prepare.image_column for image paths) / prepare.label_column in "
            f"params.yaml to the right names."
        )
    texts = _require_values(frame, params.text_column, "text", "remove those rows or fill in their text", path)
    labels = _require_values(frame, params.label_column, "label", "label those rows or remove them", path)
    clean = pd.DataFrame({
        "text": texts.astype(str).map(lambda text: normalise_text(text, params.lowercase)),
        "label": labels.astype(str).str.strip(),
    })
    too_short = clean["text"].str.len() < params.min_text_chars
    if too_short.any():
        raise DataError(
            f"{path}: text shorter than prepare.min_text_chars={params.min_text_chars} after normalising at "
            f"row(s) {_rows(too_short)}; remove those rows or lower prepare.min_text_chars."
        )
    if params.task == "regression":
        numeric = pd.to_numeric(clean["label"], errors="coerce")
        if numeric.isna().any():
            raise DataError(
                f"{path}: non-numeric label at row(s) {_rows(numeric.isna())} but prepare.task is regression; "
                f"fix those labels or set prepare.task: classification."
            )
        clean["label"] = numeric.astype("float64")
    return clean


def _load_image_table(frame: pd.DataFrame, path: Path, params: PrepareParams) -> pd.DataFrame:
    """A table of image paths (relative to the table's folder, or absolute) and labels."""
    if params.label_column not in frame.columns:
        raise DataError(f"{path}: missing column {params.label_column!r}; the file has {list(frame.columns)}. "
                        f"Set prepare.label_column.")
    paths = _require_values(frame, params.image_column, "image path", "remove those rows or fill in the path", path)
    labels = _require_values(frame, params.label_column, "label", "label those rows or remove them", path)
    resolved = [str(candidate if candidate.is_absolute() else path.parent / candidate)
                for candidate in map(Path, paths.astype(str).str.strip())]
    missing = [index for index, candidate in enumerate(resolved) if not Path(candidate).is_file()]
    if missing:
        raise DataError(f"{path}: image file(s) not found at row(s) {', '.join(str(i + 1) for i in missing[:5])} "
                        f"(e.g. {resolved[missing[0]]}); paths are relative to the table's folder.")
    clean = pd.DataFrame({"image": resolved, "label": labels.astype(str).str.strip()})
    return _check_images(clean, path, params)


def _check_images(frame: pd.DataFrame, source: Path, params: PrepareParams) -> pd.DataFrame:
    """Decode every image once (corrupt or too small ones are errors) and keep paths relative to the
    working directory, so the prepared tables stay valid in a teammate's clone."""
    import os

    from crosstune.images import check_image

    for image_path in frame["image"]:
        check_image(Path(image_path), params.min_image_size)
    frame = frame.copy()
    frame["image"] = [os.path.relpath(p) if Path(p).resolve().is_relative_to(Path.cwd()) else str(Path(p).resolve())
                      for p in frame["image"]]
    if params.task == "regression":
        raise DataError(f"{source}: image inputs support prepare.task: classification only.")
    return frame


def _content_keys(frame: pd.DataFrame) -> pd.Series:
    """What makes two examples the same: the text, or the image file's bytes."""
    if "text" in frame:
        return frame["text"]
    import hashlib

    return frame["image"].map(lambda image: hashlib.sha1(Path(image).read_bytes()).hexdigest())


def deduplicate(train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop repeated training examples and training examples that also appear in the test set (leakage)."""
    keys = _content_keys(train)
    repeated_mask = keys.duplicated(keep="first")
    leaking = keys.isin(set(_content_keys(test))) & ~repeated_mask
    train = train[~repeated_mask & ~leaking]
    return train.reset_index(drop=True), {"duplicates_dropped": int(repeated_mask.sum()),
                                          "test_overlap_dropped": int(leaking.sum())}


def check_class_counts(train: pd.DataFrame, path: str | Path, minimum: int) -> None:
    """Every class needs ``minimum`` training examples for a stratified split and a meaningful F1."""
    counts = train["label"].value_counts()
    small = counts[counts < minimum]
    if not small.empty:
        detail = ", ".join(f"{label!r}: {count}" for label, count in small.sort_index().items())
        raise DataError(
            f"{path}: too few training examples for class(es) {detail} (need at least "
            f"prepare.min_examples_per_class={minimum}); add examples, merge or drop those classes, "
            f"or lower prepare.min_examples_per_class."
        )


def check_test_labels(test: pd.DataFrame, labels: list[str], path: str | Path) -> None:
    """Test labels must all be seen in training: the head has no output for anything else."""
    unknown = ~test["label"].isin(labels)
    if unknown.any():
        names = sorted(set(test.loc[unknown, "label"]))
        raise DataError(
            f"{path}: label(s) {names} at row(s) {_rows(unknown)} never occur in the training file "
            f"(known labels: {labels}); fix the labels, add training examples for them, or drop those rows."
        )


def _split(frame: pd.DataFrame, fraction: float, seed: int, stratify: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    kept, held_out = train_test_split(
        frame, test_size=fraction, random_state=seed, stratify=frame["label"] if stratify else None
    )
    return kept.reset_index(drop=True), held_out.reset_index(drop=True)


@dataclass(frozen=True)
class PreparedData:
    """The three clean splits and the sorted label names (empty for regression)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    summary: dict[str, Any]


def prepare_target_data(
    train_path: str | Path, test_path: str | Path | None, params: PrepareParams, seed: int
) -> PreparedData:
    """Validate and split the target data; nothing is written here (see :func:`write_prepared`)."""
    classify = params.task == "classification"
    train = load_examples(train_path, params)
    if test_path is not None:
        test = load_examples(test_path, params)
    else:
        if classify:
            check_class_counts(train, train_path, params.min_examples_per_class)
        train, test = _split(train, params.test_fraction, seed, stratify=classify)
    dedup_counts = {"duplicates_dropped": 0, "test_overlap_dropped": 0}
    if params.deduplicate:
        train, dedup_counts = deduplicate(train, test)
    labels: list[str] = []
    if classify:
        check_class_counts(train, train_path, params.min_examples_per_class)
        labels = sorted(train["label"].unique())
        check_test_labels(test, labels, test_path or train_path)
    train, validation = _split(train, params.validation_fraction, seed, stratify=classify)
    splits = {"train": train, "validation": validation, "test": test}
    modality = "image" if "image" in train else "text"
    if "image" in test and modality != "image" or "text" in test and modality != "text":
        raise DataError(f"{test_path}: holds {'images' if 'image' in test else 'texts'} but {train_path} holds "
                        f"{modality}s; give both in the same kind.")
    summary: dict[str, Any] = {"task": params.task, "modality": modality, "num_labels": len(labels), **dedup_counts}
    for name, frame in splits.items():
        summary[f"{name}_size"] = len(frame)
        if classify:
            for label, count in frame["label"].value_counts().sort_index().items():
                summary[f"{name}_count_{label}"] = int(count)
    logger.info("prepared %s", ", ".join(f"{name}={len(frame)}" for name, frame in splits.items()))
    if classify:
        logger.info("labels %s; training counts %s", labels, train["label"].value_counts().to_dict())
    return PreparedData(train, validation, test, labels, summary)


def write_prepared(data: PreparedData, out_dir: str | Path, params: PrepareParams) -> None:
    """Write the splits, label map and summary as one atomic directory."""
    from crosstune.config import to_dict

    with atomic_directory(out_dir) as staging:
        for name in SPLITS:
            write_csv(staging / f"{name}.csv", getattr(data, name))
        write_json(staging / "labels.json", {"task": params.task, "labels": data.labels,
                                             "modality": data.summary["modality"]})
        write_json(staging / "summary.json", data.summary)
        write_json(staging / "params.json", to_dict(params))


def read_split(prepared_dir: str | Path, split: str) -> pd.DataFrame:
    """Read one prepared split back with explicit dtypes (labels: str, or float for regression)."""
    path = Path(prepared_dir) / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found; run the prepare stage first (dvc repro prepare).")
    task, _ = read_label_info(prepared_dir)
    label_dtype = "float64" if task == "regression" else str
    return pd.read_csv(path, dtype={"text": str, "image": str, "label": label_dtype}, keep_default_na=False)


def read_label_info(prepared_dir: str | Path) -> tuple[str, list[str]]:
    """Return ``(task, labels)`` from the prepared ``labels.json``."""
    from crosstune.io import read_json

    info = read_json(Path(prepared_dir) / "labels.json")
    return info["task"], list(info["labels"])


def read_modality(prepared_dir: str | Path) -> str:
    """``text`` or ``image``: what the prepared data holds."""
    from crosstune.io import read_json

    return read_json(Path(prepared_dir) / "labels.json").get("modality", "text")


def read_source_sample(directory: str | Path, modality: str) -> list[str] | None:
    """The optional source-domain sample in ``directory`` (default ``data/source/``) for the domain-gap
    report: texts from the ``text`` column of ``source.csv``/``.tsv``/``.parquet``, or the paths of the
    images under ``images/``. Labels are not needed. None when there is none."""
    from crosstune.images import IMAGE_SUFFIXES

    directory = Path(directory)
    if modality == "image":
        images = sorted(str(path) for path in (directory / "images").rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        return images or None
    for name in ("source.csv", "source.tsv", "source.parquet"):
        path = directory / name
        if path.is_file():
            frame = read_table(path)
            if "text" not in frame.columns:
                raise DataError(f"{path}: no 'text' column (columns: {list(frame.columns)}); name the source "
                                f"texts' column 'text'.")
            texts = _require_values(frame, "text", "text", "remove those rows or fill in their text", path)
            return [normalise_text(text) for text in texts.astype(str)]
    return None
