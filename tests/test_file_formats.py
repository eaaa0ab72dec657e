"""crosstune.data.tables.read_table: the table formats people have (CSV dialects, JSON Lines, Excel,
Parquet) read into the same frame, and each malformed one a one-line DataError naming the file, the line
and the fix."""

from __future__ import annotations

import datetime
import json
import re
import zipfile
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
from conftest import REPO_ROOT, make_texts, write_table

from crosstune.config import TABLE_SEPARATORS, PrepareParams
from crosstune.data.splitting import prepare_target_data
from crosstune.data.tables import READERS, read_table, sniff_separator
from crosstune.errors import ConfigError, DataError

# texts holding every separator, a quote and a newline: only correct quoting and the right separator read them
ROWS = [
    ("good, really; fine | ok", "1"),
    ('she said "no"\tthen left', "0"),
    ("two\nlines, one text", "1"),
    ("plain", "2"),
]
EXPECTED = pd.DataFrame(ROWS, columns=["review", "rating"])


def _csv(sep: str, encoding: str = "utf-8") -> Callable[[Path], None]:
    return lambda path: EXPECTED.to_csv(path, index=False, sep=sep, encoding=encoding)


def _json_lines(path: Path) -> None:
    # labels as JSON numbers and as strings: both must read as the CSV's strings
    lines = [json.dumps({"review": text, "rating": int(label) if index % 2 else label})
             for index, (text, label) in enumerate(ROWS)]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")


def _excel(path: Path) -> None:
    EXPECTED.assign(rating=EXPECTED["rating"].astype(int)).to_excel(path, index=False)  # numbers, not text


WRITERS = {
    "bom_semicolon.csv": _csv(";", "utf-8-sig"),
    "comma.csv": _csv(","),
    "pipe.csv": _csv("|"),
    "tab.tsv": _csv("\t"),
    "tab.txt": _csv("\t"),
    "semicolon.tsv": _csv(";"),  # the suffix says tab, the file says ;
    "quoted.csv": lambda path: path.write_text(
        'review,rating\n"good, really; fine | ok",1\n"she said ""no""\tthen left",0\n"two\nlines, one text",1\n'
        "plain,2\n", encoding="utf-8"),
    "lines.jsonl": _json_lines,
    "lines.ndjson": _json_lines,
    "sheet.xlsx": _excel,
    "table.parquet": lambda path: EXPECTED.to_parquet(path),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_format_reads_into_the_same_frame(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    WRITERS[name](path)
    frame = read_table(path)
    assert list(frame.columns) == ["review", "rating"]  # no "\ufeff" left on the first header
    pd.testing.assert_frame_equal(frame, EXPECTED)


def test_a_separator_ending_every_line_loses_nothing_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "trailing.csv"
    path.write_text("review,rating\na,1,\nb,2,\n", encoding="utf-8")
    pd.testing.assert_frame_equal(read_table(path), pd.DataFrame({"review": ["a", "b"], "rating": ["1", "2"]}))


def test_every_registered_suffix_has_a_writer_here() -> None:
    assert sorted(READERS) == sorted({".pq", *(Path(name).suffix for name in WRITERS)})


@pytest.mark.parametrize(
    ("separator", "columns"),
    [(",", ["a;b|c\td", "e"]), (";", ["a", "b|c\td,e"]), ("|", ["a;b", "c\td,e"]), ("tab", ["a;b|c", "d,e"]),
     ("\t", ["a;b|c", "d,e"])],
)
def test_forced_separator_wins_over_sniffing(tmp_path: Path, separator: str, columns: list[str]) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("a;b|c\td,e\n1;2|3\t4,5\n", encoding="utf-8")
    assert list(read_table(path, separator).columns) == columns
    assert list(read_table(path, PrepareParams(separator=separator).separator).columns) == columns


def test_separator_param_lists_the_allowed_values() -> None:
    assert sorted(TABLE_SEPARATORS) == [",", ";", "tab", "|"]
    with pytest.raises(ConfigError, match=r"prepare\.separator: 'comma' is not one of \[',', ';', 'auto', 'tab'"):
        PrepareParams(separator="comma")
    with pytest.raises(ValueError, match=r"separator 'comma' is not one of \['auto', ','"):
        read_table("any.csv", "comma")


@pytest.mark.parametrize(
    ("name", "content", "separator"),
    [
        ("one_column.csv", "review\nfine, thanks\n", ","),
        ("one_column.tsv", "review\nfine, thanks\n", "\t"),
        ("commas_in_text.csv", "review;rating\n" + "a, b, c, d;1\n" * 3 + "e;2\n", ";"),
        ("semicolons_in_text.csv", "review,rating\n" + "a; b; c; d,1\n" * 3 + "e,2\n", ","),
    ],
)
def test_sniffing_falls_back_to_the_suffix_and_checks_the_header(tmp_path: Path, name: str, content: str,
                                                                 separator: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert sniff_separator(path) == separator


def test_sniffing_reads_the_shipped_reviews_as_commas() -> None:
    # long quoted reviews full of commas: csv.Sniffer alone gives up on these
    for path in (REPO_ROOT / "data" / "raw").glob("*.csv"):
        assert sniff_separator(path) == ","


def test_excel_numbers_and_dates_come_out_as_a_csv_would_hold_them(tmp_path: Path) -> None:
    path = tmp_path / "cells.xlsx"
    pd.DataFrame({
        "review": ["a", "b", "c", "d"],
        "rating": [5, 5.5, 5.0, None],
        "flag": [True, False, True, True],
        "day": [datetime.datetime(2024, 1, 2), datetime.datetime(2024, 1, 2, 13, 45), None, None],
    }).to_excel(path, index=False)
    frame = read_table(path)
    assert frame["rating"].tolist()[:3] == ["5", "5.5", "5"] and pd.isna(frame["rating"][3])
    assert frame["flag"].tolist() == ["TRUE", "FALSE", "TRUE", "TRUE"]
    assert frame["day"].tolist()[:2] == ["2024-01-02", "2024-01-02 13:45:00"] and frame["day"][2:].isna().all()


def test_json_lines_values_keep_their_literal_text(tmp_path: Path) -> None:
    path = tmp_path / "values.jsonl"
    path.write_text('{"review": "a", "rating": 1.50, "ok": true}\n{"review": "b", "rating": null}\n'
                    '{"review": "", "rating": "1", "ok": false}\n', encoding="utf-8-sig")
    frame = read_table(path)
    assert frame["rating"].tolist()[0::2] == ["1.50", "1"] and pd.isna(frame["rating"][1])
    assert frame["ok"].tolist()[0::2] == ["true", "false"] and pd.isna(frame["ok"][1])  # missing key
    assert pd.isna(frame["review"][2])  # "" is missing, as an empty CSV cell


def _zip_without_workbook(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a workbook")


def _truncated_xlsx(path: Path) -> None:
    _excel(path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    ("name", "make_bad", "message"),
    [
        ("bad.csv", lambda p: p.write_text("review,rating\na,1\nb,2,3\n", encoding="utf-8"),
         r"bad\.csv: line 3 has 3 fields instead of 2 \(separator ',', sniffed\); set prepare\.separator "
         r"to the file's separator \(auto, ',', ';', tab, '\|'\), or put double quotes around fields"),
        ("bad.csv", lambda p: p.write_text('review,rating\n"two\nlines",1\nb,2\n\nc,3,4\n', encoding="utf-8"),
         r"bad\.csv: line 6 has 3 fields"),  # the editor's line: quoted newlines and blank lines counted
        ("first.csv", lambda p: p.write_text("review,rating\n\na,1,x\nb,2\n", encoding="utf-8"),
         r"first\.csv: line 3 has 3 fields instead of 2"),  # pandas alone would make column 1 the index
        ("bom.csv", lambda p: p.write_text("review;rating\nfine, thanks;1\nok;2\nsorry; no;0\n",
                                           encoding="utf-8-sig"),
         r"bom\.csv: line 4 has 3 fields instead of 2 \(separator ';', sniffed\)"),  # issue #18
        ("bad.jsonl", lambda p: p.write_text('{"review": "a", "rating": 1}\n{"review": "b", rating: 2}\n',
                                             encoding="utf-8"),
         r'bad\.jsonl: line 2 is not valid JSON \(Expecting property name enclosed in double quotes at column 17\); '
         r'write one JSON object per line, e\.g\. \{"text": "\.\.\.", "label": "\.\.\."\}\.'),
        ("list.jsonl", lambda p: p.write_text('{"review": "a"}\n\n["b", 2]\n', encoding="utf-8"),
         r"list\.jsonl: line 3 holds a JSON list, not an object; write one JSON object per line"),
        ("junk.xlsx", lambda p: p.write_bytes(b"not a workbook at all"),
         r"junk\.xlsx: not a readable Excel workbook \(.*\); re-save it as \.xlsx from Excel or LibreOffice"),
        ("cut.xlsx", _truncated_xlsx, r"cut\.xlsx: not a readable Excel workbook"),
        ("empty_zip.xlsx", _zip_without_workbook, r"empty_zip\.xlsx: not a readable Excel workbook"),
        ("latin1.csv", lambda p: p.write_bytes("review,rating\ncafé,1\n".encode("latin-1")),
         r"latin1\.csv: not UTF-8 text \(.*\); re-save it as UTF-8"),
        ("data.xls", lambda p: p.write_bytes(b"old excel"),
         r"data\.xls: unsupported file type '\.xls'; use one of \[.*'\.jsonl'.*'\.xlsx'\]"),
        ("forced.csv", lambda p: p.write_text("review;rating\na,b;1\n", encoding="utf-8"),
         r"forced\.csv: line 2 has 2 fields instead of 1 \(separator ',', from prepare\.separator\)"),
    ],
)
def test_malformed_file_is_one_line_naming_file_line_and_fix(tmp_path: Path, name: str,
                                                             make_bad: Callable[[Path], None], message: str) -> None:
    path = tmp_path / name
    make_bad(path)
    with pytest.raises(DataError, match=message) as caught:
        read_table(path, "," if name == "forced.csv" else "auto")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "make_empty", "message"),
    [
        ("bom_only.csv", lambda p: p.write_bytes(b"\xef\xbb\xbf"), r"the file is empty"),
        ("header.csv", lambda p: p.write_text("\ufeffreview;rating\n", encoding="utf-8"), r"has a header but no rows"),
        ("blank.jsonl", lambda p: p.write_text("\n\n", encoding="utf-8"), r"the file is empty"),
        ("header.xlsx", lambda p: pd.DataFrame(columns=["review", "rating"]).to_excel(p, index=False),
         r"has a header but no rows"),
        ("nothing.xlsx", lambda p: pd.DataFrame().to_excel(p, index=False), r"the file is empty"),
    ],
)
def test_empty_and_header_only_files_keep_their_messages(tmp_path: Path, name: str,
                                                         make_empty: Callable[[Path], None], message: str) -> None:
    path = tmp_path / name
    make_empty(path)
    with pytest.raises(DataError, match=f"{re.escape(name)}: {message}"):
        read_table(path)


def test_prepare_reads_a_bom_semicolon_csv_like_a_plain_one(tmp_path: Path) -> None:
    rows = [(f"{text}, truly; really", label) for text, label in make_texts(10, seed=0)]
    plain = write_table(tmp_path / "plain.csv", rows)
    semicolon = tmp_path / "excel.csv"
    pd.read_csv(plain, dtype=str).to_csv(semicolon, index=False, sep=";", encoding="utf-8-sig")
    params = PrepareParams(validation_fraction=0.2)
    expected = prepare_target_data(plain, None, params, seed=0)
    for separator in ("auto", ";"):
        data = prepare_target_data(semicolon, None, PrepareParams(validation_fraction=0.2, separator=separator),
                                   seed=0)
        assert data.labels == expected.labels == ["negative", "neutral", "positive"]
        for split in ("train", "validation", "test"):
            pd.testing.assert_frame_equal(getattr(data, split), getattr(expected, split))
