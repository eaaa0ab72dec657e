"""prepare-target-data: every bad input gets a clear error naming file, row and fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT, make_texts, write_table

from crosstune.config import PrepareParams
from crosstune.data.preparation import normalise_text, prepare_target_data, read_table
from crosstune.errors import DataError
from crosstune.pipeline.prepare import prepare_stage

PARAMS = PrepareParams(text_column="review", label_column="rating", validation_fraction=0.2)


def test_normalise_text_undoes_html_quotes_and_space() -> None:
    assert normalise_text('  "I couldn&rsquo;t   sleep\n at all"  ') == "I couldn’t sleep at all"
    assert normalise_text("Fine &amp; Dandy", lowercase=True) == "fine & dandy"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_reads_csv_tsv_and_parquet(tmp_path: Path, suffix: str) -> None:
    path = write_table(tmp_path / f"train{suffix}", make_texts(10, seed=0))
    data = prepare_target_data(path, None, PARAMS, seed=0)
    assert data.labels == ["negative", "neutral", "positive"]
    assert len(data.train) + len(data.validation) + len(data.test) == 30


def test_split_is_stratified_deterministic_and_disjoint(raw_data: dict[str, Path]) -> None:
    first = prepare_target_data(raw_data["train"], raw_data["test"], PARAMS, seed=3)
    second = prepare_target_data(raw_data["train"], raw_data["test"], PARAMS, seed=3)
    pd.testing.assert_frame_equal(first.train, second.train)
    assert set(first.train["text"]).isdisjoint(first.validation["text"])
    assert first.validation["label"].value_counts().to_dict() == {"negative": 6, "neutral": 6, "positive": 6}


def test_deduplicates_and_drops_test_overlap(tmp_path: Path) -> None:
    rows = make_texts(10, seed=0)
    test_rows = make_texts(5, seed=9)
    train = write_table(tmp_path / "train.csv", rows + rows[:4] + test_rows[:2])
    test = write_table(tmp_path / "test.csv", test_rows)
    data = prepare_target_data(train, test, PARAMS, seed=0)
    assert data.summary["duplicates_dropped"] == 4
    assert data.summary["test_overlap_dropped"] == 2
    assert not set(data.train["text"]) & set(data.test["text"])


def _frame_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda p: p.write_text("", encoding="utf-8"), r"train\.csv: the file is empty"),
        (lambda p: p.write_text("review,rating\n", encoding="utf-8"), r"train\.csv: has a header but no rows"),
        (lambda p: p.write_text("text,label\na,b\n", encoding="utf-8"),
         r"missing column\(s\) \['review', 'rating'\].*prepare\.text_column"),
        (lambda p: p.write_text("review,rating\n" + "good,positive\n" * 3 + ",negative\n", encoding="utf-8"),
         r"empty or missing text in column 'review' at row\(s\) 4"),
        (lambda p: p.write_text("review,rating\nfine,\n", encoding="utf-8"), r"empty or missing label .* row\(s\) 1"),
        (lambda p: p.write_bytes(b"PAR1 not really parquet"), r"cannot be parsed"),
    ],
)
def test_malformed_train_file(tmp_path: Path, make_bad, message: str) -> None:
    path = tmp_path / ("train.parquet" if "parsed" in message else "train.csv")
    make_bad(path)
    with pytest.raises(DataError, match=message):
        prepare_target_data(path, None, PARAMS, seed=0)


def test_unsupported_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
        read_table(tmp_path / "data.xlsx")
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "absent.csv")


def test_unknown_test_label_names_rows_and_labels(raw_data: dict[str, Path], tmp_path: Path) -> None:
    test = write_table(tmp_path / "test.csv", make_texts(3, seed=5) + [("a brand new review", "mixed")])
    with pytest.raises(DataError, match=r"label\(s\) \['mixed'\] at row\(s\) 10 never occur in the training file"):
        prepare_target_data(raw_data["train"], test, PARAMS, seed=0)


def test_too_few_examples_per_class(tmp_path: Path) -> None:
    rows = make_texts(10, seed=0)
    rows = [row for row in rows if row[1] != "neutral"] + [r for r in rows if r[1] == "neutral"][:2]
    train = write_table(tmp_path / "train.csv", rows)
    with pytest.raises(DataError, match=r"too few training examples for class\(es\) 'neutral': 2.*min_examples_per_class"):
        prepare_target_data(train, None, PARAMS, seed=0)


def test_regression_requires_numeric_labels(tmp_path: Path) -> None:
    train = write_table(tmp_path / "train.csv", [("text one", "1.5"), ("text two", "high")])
    with pytest.raises(DataError, match=r"non-numeric label at row\(s\) 2"):
        prepare_target_data(train, None, PrepareParams(text_column="review", label_column="rating",
                                                        task="regression"), seed=0)


def test_failed_prepare_leaves_earlier_outputs_intact(raw_data: dict[str, Path], params_file: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(out), str(params_file))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    bad_test = write_table(tmp_path / "bad_test.csv", [("unseen label text", "mixed")])
    with pytest.raises(DataError):
        prepare_stage(str(raw_data["train"]), str(bad_test), str(out), str(params_file))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".prepared")]


def test_stage_script_exits_nonzero_with_clear_message(raw_data: dict[str, Path], params_file: Path,
                                                       tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,positive\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "prepare.py"), "--train", str(bad), "--out",
         str(tmp_path / "out"), "--params", str(params_file)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "crosstune: error:" in result.stderr and "bad.csv: missing column(s)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
