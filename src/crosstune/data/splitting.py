"""prepare-target-data: read, validate, normalise, deduplicate and split the target-domain data.

Outputs (in ``out_dir``): ``train.csv``, ``validation.csv``, ``test.csv`` with columns named after the
modality (``text``, or ``image`` / ``audio``: file paths) and ``label``, ``labels.json`` (the task, the sorted
label names: index i is output i, the modality and the column of the user's table that held the inputs) and ``summary.json``. The task (:mod:`crosstune.tasks`) says
how labels are read, checked and stratified; the modality (:mod:`crosstune.modalities`) how inputs are read
and compared. Tokenising waits for the backbone stage, which knows the tokenizer.
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
from crosstune.data.prepared_dir import SPLITS
from crosstune.data.tables import READERS, read_table, row_numbers
from crosstune.errors import DataError
from crosstune.io import atomic_directory, write_csv, write_json
from crosstune.modalities import (
    MODALITIES,
    Modality,
    folder_modality,
    modality_of_frame,
)
from crosstune.tasks.base import Task
from crosstune.tasks.registry import get_task

logger = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str, lowercase: bool = False) -> str:
    """Undo HTML escapes, fold Unicode look-alikes, drop wrapping quotes and collapse white space."""
    text = unicodedata.normalize("NFKC", html.unescape(text))
    text = _WHITESPACE.sub(" ", text).strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text.lower() if lowercase else text


def _require_values(frame: pd.DataFrame, column: str, what: str, fix: str, path: Path) -> pd.Series:
    """``frame[column]``, or a `DataError` naming the rows where it is empty or missing."""
    values = frame[column]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        raise DataError(
            f"{path}: empty or missing {what} in column {column!r} at row(s) {row_numbers(empty)} "
            f"(row 1 = first row after the header); {fix}."
        )
    return values


def load_examples(path: str | Path, params: PrepareParams) -> pd.DataFrame:
    """Read one input and return a clean frame (the modality's input column and ``label``), or raise
    `DataError`.

    A directory holds one sub-folder per class, of images (ImageFolder) or of recordings (wav, flac, ogg); a
    table holds a text column (``prepare.text_column``), or a column of image paths (``prepare.image_column``)
    or of recording paths (``prepare.audio_column``), relative to the table's folder.
    """
    path = Path(path)
    task = get_task(params.task)
    own = task.read_examples(path, params)  # a task with file formats of its own (tagged sentences)
    if own is not None:
        return own
    if path.is_dir():
        if not any(child.is_dir() and not child.name.startswith(".") for child in path.iterdir()):
            raise DataError(f"{path}: no class sub-folders; put each class's images or recordings in "
                            f"{path}/<class name>/.")
        modality = folder_modality(path)
        task.check_modality(modality.name, path)
        return _check_files(list_class_folder(path, modality.folder_suffixes, modality.name), modality, params)
    frame = read_table(path, params.separator).reset_index(drop=True)
    if params.text_column not in frame.columns:
        for name in MODALITIES:
            modality = MODALITIES.get(name)
            column = getattr(params, modality.column_param)
            if column in frame.columns:
                return _load_path_table(frame, path, params, task, modality, column)
    missing = [column for column in (params.text_column, params.label_column) if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; the file has {list(frame.columns)}. "
            f"Set prepare.text_column (or prepare.image_column / prepare.audio_column for file paths) / "
            f"prepare.label_column in params.yaml to the right names."
        )
    task.check_modality("text", path)
    texts = _require_values(frame, params.text_column, "text", "remove those rows or fill in their text", path)
    labels = _require_values(frame, params.label_column, "label", "label those rows or remove them", path)
    clean = pd.DataFrame({
        "text": texts.astype(str).map(lambda text: normalise_text(text, params.lowercase)),
        "label": task.read_labels(labels, path),
    })
    too_short = clean["text"].str.len() < params.min_text_chars
    if too_short.any():
        raise DataError(
            f"{path}: text shorter than prepare.min_text_chars={params.min_text_chars} after normalising at "
            f"row(s) {row_numbers(too_short)}; remove those rows or lower prepare.min_text_chars."
        )
    return clean


def list_class_folder(directory: Path, suffixes: tuple[str, ...], kind: str) -> pd.DataFrame:
    """``kind`` (file path) and ``label`` for every file of a folder-per-class layout (ImageFolder style)."""
    classes = sorted(child for child in directory.iterdir() if child.is_dir() and not child.name.startswith("."))
    rows = []
    for class_dir in classes:
        files = sorted(path for path in class_dir.iterdir() if path.suffix.lower() in suffixes)
        if not files:
            raise DataError(f"{class_dir}: empty class folder (no {', '.join(suffixes)} files); "
                            f"add {kind} files or remove the folder.")
        rows.extend((str(path), class_dir.name) for path in files)
    return pd.DataFrame(rows, columns=[kind, "label"])


def _load_path_table(frame: pd.DataFrame, path: Path, params: PrepareParams, task: Task, modality: Modality,
                     column: str) -> pd.DataFrame:
    """A table of image or recording paths (relative to the table's folder, or absolute) and labels."""
    kind = modality.name
    task.check_modality(kind, path)
    if params.label_column not in frame.columns:
        raise DataError(f"{path}: missing column {params.label_column!r}; the file has {list(frame.columns)}. "
                        f"Set prepare.label_column.")
    paths = _require_values(frame, column, f"{kind} path", "remove those rows or fill in the path", path)
    labels = _require_values(frame, params.label_column, "label", "label those rows or remove them", path)
    resolved = [str(candidate if candidate.is_absolute() else path.parent / candidate)
                for candidate in map(Path, paths.astype(str).str.strip())]
    missing = [index for index, candidate in enumerate(resolved) if not Path(candidate).is_file()]
    if missing:
        raise DataError(f"{path}: {kind} file(s) not found at row(s) {', '.join(str(i + 1) for i in missing[:5])} "
                        f"(e.g. {resolved[missing[0]]}); paths are relative to the table's folder.")
    clean = pd.DataFrame({kind: resolved, "label": task.read_labels(labels, path)})
    return _check_files(clean, modality, params)


def _check_files(frame: pd.DataFrame, modality: Modality, params: PrepareParams) -> pd.DataFrame:
    """Decode every image or recording once (corrupt, empty, silent, too small or too short ones are errors)
    and keep paths relative to the working directory, so the prepared tables stay valid in a teammate's clone."""
    import os

    modality.check_files(frame[modality.name].tolist(), params)
    frame = frame.copy()
    frame[modality.name] = [os.path.relpath(p) if Path(p).resolve().is_relative_to(Path.cwd())
                            else str(Path(p).resolve()) for p in frame[modality.name]]
    return frame


def deduplicate(train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop repeated training examples and training examples that also appear in the test set (leakage)."""
    modality = modality_of_frame(train)
    keys = modality.content_keys(train)
    repeated_mask = keys.duplicated(keep="first")
    leaking = keys.isin(set(modality.content_keys(test))) & ~repeated_mask
    train = train[~repeated_mask & ~leaking]
    return train.reset_index(drop=True), {"duplicates_dropped": int(repeated_mask.sum()),
                                          "test_overlap_dropped": int(leaking.sum())}


def _split(frame: pd.DataFrame, fraction: float, seed: int, task: Task) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out ``fraction`` of ``frame`` as the task holds examples out (``Task.hold_out``)."""
    kept, held_out = task.hold_out(frame, fraction, seed)
    return kept.reset_index(drop=True), held_out.reset_index(drop=True)


@dataclass(frozen=True)
class PreparedData:
    """The three clean splits, the optional labelled source domain and the sorted label names (empty when the
    task predicts values). Target training rows whose label is hidden (``prepare.target_labelled`` < 1) have an
    empty label: they are the unlabelled target pool."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    summary: dict[str, Any]
    source: pd.DataFrame | None = None


SOURCE_TABLES = tuple(f"source{suffix}" for suffix in READERS)  # source.csv, source.jsonl, ...


def find_source(path: str | Path) -> Path | None:
    """What ``data.source`` names: a table, an ImageFolder, or a folder holding ``source.csv`` (or
    ``source`` with any table suffix: ``.tsv``, ``.jsonl``, ``.xlsx``, ...) or an ImageFolder ``images/``. None for a folder with none of those (as shipped:
    ``data/source/`` with only its README), meaning no source domain."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder; set data.source in params.yaml to a table or an image "
                        f"folder of the labelled source domain, or to data/source (as shipped: no source domain).")
    for name in SOURCE_TABLES:
        if (path / name).is_file():
            return path / name
    if (path / "images").is_dir():
        return path / "images"
    if any(child.is_dir() and not child.name.startswith(".") for child in path.iterdir()):
        return path
    return None


def load_source(path: Path, params: PrepareParams, labels: list[str]) -> pd.DataFrame:
    """The labelled source domain, its labels mapped onto the target's (``prepare.source_label_map``)."""
    get_task(params.task).check_source_domain(path)
    source = load_examples(path, params)
    mapping = params.source_label_map
    if mapping:
        unmapped = sorted(set(source["label"]) - set(mapping))
        if unmapped:
            raise DataError(f"{path}: source label(s) {unmapped} are missing from prepare.source_label_map; map "
                            f"each to a target label {labels} or to 'drop' to leave those rows out.")
        wrong = sorted({value for value in mapping.values() if value != "drop" and value not in labels})
        if wrong:
            raise DataError(f"params.yaml: prepare.source_label_map maps to {wrong}, which are not target labels "
                            f"{labels}; use one of those or 'drop'.")
        source = source.assign(label=source["label"].map(mapping))
        source = source[source["label"] != "drop"].reset_index(drop=True)
    unknown = ~source["label"].isin(labels)
    if unknown.any():
        raise DataError(f"{path}: source label(s) {sorted(set(source.loc[unknown, 'label']))} at row(s) "
                        f"{row_numbers(unknown)} are not target labels {labels}; declare how they map in "
                        f"prepare.source_label_map (source label: target label, or drop).")
    if source.empty:
        raise DataError(f"{path}: no source rows left after prepare.source_label_map; map some labels to target ones.")
    return source


def hide_target_labels(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Keep the labels of a stratified ``fraction`` of the target training rows and blank the rest: the
    semi-supervised (0 < fraction < 1) and unsupervised (0) settings, with the inputs kept as the
    unlabelled target pool."""
    if fraction >= 1.0:
        return train
    train = train.copy()
    if fraction <= 0.0:
        train["label"] = ""
        return train
    from sklearn.model_selection import train_test_split

    counts = train["label"].value_counts()
    keep = max(int(round(fraction * len(train))), 1)
    if keep >= len(train):
        return train
    stratify = train["label"] if counts.min() >= 2 and keep >= len(counts) else None
    kept, _ = train_test_split(train.index, train_size=keep, random_state=seed, stratify=stratify)
    train.loc[~train.index.isin(kept), "label"] = ""
    return train


def prepare_target_data(
    train_path: str | Path, test_path: str | Path | None, params: PrepareParams, seed: int,
    source_path: str | Path | None = None,
) -> PreparedData:
    """Validate and split the target data (and the source domain, when ``source_path`` holds one);
    nothing is written here (see :func:`write_prepared`)."""
    task = get_task(params.task)
    source_file = find_source(source_path) if source_path is not None else None
    if source_file is None and (params.target_labelled < 1.0 or params.validation_domain == "source"):
        key = "target_labelled" if params.target_labelled < 1.0 else "validation_domain"
        raise DataError(f"params.yaml: prepare.{key} needs a labelled source domain, but data.source "
                        f"({source_path}) holds none; point data.source at one, or set "
                        f"prepare.target_labelled: 1.0 and prepare.validation_domain: target.")
    train = load_examples(train_path, params)
    if test_path is not None and Path(test_path).resolve() == Path(train_path).resolve():
        # data.test set to data.train's path: no separate test file (dvc.yaml needs a path in both)
        logger.info("prepare: data.test is data.train (%s): holding out prepare.test_fraction = %g of it as the "
                    "test split", train_path, params.test_fraction)
        test_path = None
    if test_path is not None:
        test = load_examples(test_path, params)
    else:
        task.check_training_labels(train, Path(train_path), params.min_examples_per_class)
        train, test = _split(train, params.test_fraction, seed, task)
    dedup_counts = {"duplicates_dropped": 0, "test_overlap_dropped": 0}
    if params.deduplicate:
        train, dedup_counts = deduplicate(train, test)
    task.check_training_labels(train, Path(train_path), params.min_examples_per_class)
    labels = task.label_names(train)
    task.check_test_labels(test, labels, Path(test_path or train_path))
    source = load_source(source_file, params, labels) if source_file is not None else None
    if source is not None and params.validation_domain == "source":
        task.check_training_labels(source, source_file, params.min_examples_per_class)
        source, validation = _split(source, params.validation_fraction, seed, task)
    else:
        train, validation = _split(train, params.validation_fraction, seed, task)
    if source is not None:
        train = hide_target_labels(train, params.target_labelled, seed)
    splits = {"train": train, "validation": validation, "test": test}
    modality = modality_of_frame(train).name
    for other, path in ((test, test_path), (source, source_file)):
        if other is not None and modality_of_frame(other).name != modality:
            raise DataError(f"{path}: holds {modality_of_frame(other).name} inputs but {train_path} holds {modality} "
                            f"inputs; give both in the same kind.")
    # the column of the user's table that held the inputs (none for a folder per class): the model records it
    column = None if Path(train_path).is_dir() or task.reads_files else \
        getattr(params, MODALITIES.get(modality).column_param)
    summary: dict[str, Any] = {"task": task.name, "modality": modality, "num_labels": len(labels),
                               "input_column": column, **dedup_counts}
    if source is not None:
        splits["source"] = source
        summary.update({"source": str(source_file), "validation_domain": params.validation_domain,
                        "train_labelled": int((train["label"] != "").sum())})
    for name, frame in splits.items():
        summary[f"{name}_size"] = len(frame)
        summary.update({f"{name}_count_{label}": count for label, count in task.label_counts(frame).items()})
    logger.info("prepared %s", ", ".join(f"{name}={len(frame)}" for name, frame in splits.items()))
    if labels:
        logger.info("labels %s; training counts %s", labels, task.label_counts(train))
    return PreparedData(train, validation, test, labels, summary, source)


def write_prepared(data: PreparedData, out_dir: str | Path, params: PrepareParams) -> None:
    """Write the splits (and ``source.csv`` when there is a source domain), label map and summary as one
    atomic directory."""
    from crosstune.config import to_dict

    with atomic_directory(out_dir) as staging:
        for name in SPLITS:
            write_csv(staging / f"{name}.csv", getattr(data, name))
        if data.source is not None:
            write_csv(staging / "source.csv", data.source)
        # the input column: the model records it, so `crosstune predict` reads it by default
        write_json(staging / "labels.json", {"task": params.task, "labels": data.labels,
                                             "modality": data.summary["modality"],
                                             "input_column": data.summary["input_column"]})
        write_json(staging / "summary.json", data.summary)
        write_json(staging / "params.json", to_dict(params))
