"""Read the tables people have into a DataFrame: CSV/TSV/TXT in any common dialect (byte-order mark, `,` `;`
tab or `|` separators sniffed or set by ``prepare.separator``, quoted newlines), JSON Lines, Excel ``.xlsx``
and Parquet, with one-line errors naming the file, the line and the fix.

Why a module of its own: a spreadsheet export with a byte-order mark and `;` separators otherwise fails
deep inside pandas with "Expected 3 fields in line 4, saw 4" and no hint about the separator.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from crosstune.config import TABLE_SEPARATORS
from crosstune.errors import DataError

_DEFAULT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}  # what auto falls back to when sniffing can't tell
_SNIFF_CHARS = 8 * 1024  # csv.Sniffer's quote regex is quadratic on unlucky text: give it a short sample
_CHECK_CHARS = 64 * 1024  # the candidate separators are checked by parsing this much of the file
_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_SEPARATOR_CHOICES = ", ".join(["auto", *(name if name == "tab" else repr(name) for name in TABLE_SEPARATORS)])

MAX_ROWS_IN_ERROR = 5  # row numbers an error lists before "and N more"


def row_numbers(mask: pd.Series) -> str:
    """Human row numbers (1 = first row after the header) of the True entries, a few at most."""
    rows = [int(i) + 1 for i in mask[mask].index[:MAX_ROWS_IN_ERROR]]
    more = int(mask.sum()) - len(rows)
    return ", ".join(map(str, rows)) + (f" and {more} more" if more > 0 else "")


TableReader = Callable[[Path, str], pd.DataFrame]
READERS: dict[str, TableReader] = {}  # file suffix -> reader(path, separator): every table format read_table knows


def _reader(*suffixes: str) -> Callable[[TableReader], TableReader]:
    """Register a table reader for file suffixes; a suffix registered twice is an error."""
    def register(reader: TableReader) -> TableReader:
        for suffix in suffixes:
            if suffix in READERS:
                raise ValueError(f"table suffix {suffix!r} already has a reader ({READERS[suffix].__name__}).")
            READERS[suffix] = reader
        return reader

    return register


def _one_line(error: BaseException) -> str:
    """A library error's text on one line, so every DataError stays one line."""
    return " ".join(str(error).split())


def _not_utf8(path: Path, error: UnicodeDecodeError, fix: str = "re-save it as UTF-8") -> str:
    return f"{path}: not UTF-8 text ({error.reason}, byte {error.object[error.start:error.start + 1]!r}); {fix}."


def _separator_name(separator: str) -> str:
    return "tab" if separator == "\t" else repr(separator)


def read_table(path: str | Path, separator: str = "auto") -> pd.DataFrame:
    """Read a table (CSV/TSV/TXT, JSON Lines, Excel, Parquet) into a DataFrame, with errors naming the file and
    the fix.

    CSV/TSV/TXT, JSON Lines and Excel come back as strings (dtype ``str``, empty cells missing), so a label
    written ``1`` means the same class in each; Parquet keeps the types it was written with. ``separator``
    applies to CSV/TSV/TXT only: ``auto`` sniffs it, one of ``TABLE_SEPARATORS`` (``prepare.separator``)
    forces it.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(READERS)}.")
    if separator != "auto" and separator != "\t" and separator not in TABLE_SEPARATORS:
        raise ValueError(f"separator {separator!r} is not one of {['auto', *TABLE_SEPARATORS]}.")
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path (data.train, data.test or data.source in "
                        f"params.yaml for the pipeline, --input for crosstune predict).")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one example.")
    frame = reader(path, TABLE_SEPARATORS.get(separator, separator))
    if len(frame.columns) == 0:
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one example.")
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows; add examples.")
    return frame


def sniff_separator(path: str | Path) -> str:
    """The separator of a CSV/TSV/TXT file, from its first 64 KiB: ``csv.Sniffer``'s guess first, the
    suffix's usual one next, then the other candidates; the first that splits the header into two or more
    fields and the rows into as many wins. Sniffing alone misreads long texts full of commas (it gives up
    on the shipped reviews), hence the check; a one-column file gets the suffix's separator."""
    path = Path(path)
    default = _DEFAULT_SEPARATORS.get(path.suffix.lower(), ",")
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        sample = handle.read(_CHECK_CHARS)
        truncated = bool(handle.read(1))
    head = sample[:_SNIFF_CHARS]
    if len(sample) > _SNIFF_CHARS and "\n" in head:
        head = head[:head.rindex("\n") + 1]
    try:
        sniffed = [csv.Sniffer().sniff(head, delimiters="".join(TABLE_SEPARATORS.values())).delimiter]
    except csv.Error:
        sniffed = []
    candidates = list(dict.fromkeys([*sniffed, default, *TABLE_SEPARATORS.values()]))
    scores = [_consistency(sample, candidate, truncated) for candidate in candidates]
    best = max(range(len(candidates)), key=scores.__getitem__)  # the first of the best keeps the preference order
    return candidates[best] if scores[best] > 0 else default


def _consistency(sample: str, separator: str, truncated: bool) -> float:
    """Share of the sample's rows (header counted) with as many fields as a header of two or more; else 0."""
    try:
        rows = [row for row in csv.reader(io.StringIO(sample), delimiter=separator) if row]
    except csv.Error:  # e.g. a field longer than csv.field_size_limit: not this separator's fault alone
        return 0.0
    if truncated and len(rows) > 1:
        rows = rows[:-1]  # cut mid-row
    if not rows or len(rows[0]) < 2:
        return 0.0
    return sum(len(row) == len(rows[0]) for row in rows) / len(rows)


def _physical_line(path: Path, separator: str, record: int) -> int:
    """The file line where pandas' ``record`` (1 = header, blank lines counted, quoted newlines not) starts."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
            reader = csv.reader(handle, delimiter=separator)
            for _ in range(record - 1):
                next(reader)
            return reader.line_num + 1
    except (csv.Error, StopIteration):
        return record


def _long_first_row(path: Path, separator: str) -> tuple[int, int, int] | None:
    """(line, fields, header fields) when the first row has more non-empty fields than the header: pandas
    would silently take its first column as the index (or, with ``index_col=False``, drop its last fields)
    instead of failing. Empty extra fields (a separator ending every line) lose nothing and pass."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
            reader = csv.reader(handle, delimiter=separator)
            header = next((row for row in reader if row), [])
            line = reader.line_num + 1
            for row in reader:
                if row:
                    break
                line = reader.line_num + 1
            else:
                return None
    except csv.Error:
        return None
    extra = row[len(header):]
    return (line, len(row), len(header)) if any(field.strip() for field in extra) else None


def _too_many_fields(path: Path, line: int, saw: int, expected: int, separator: str, origin: str) -> DataError:
    return DataError(
        f"{path}: line {line} has {saw} fields instead of {expected} (separator "
        f"{_separator_name(separator)}, {origin}); set prepare.separator to the file's separator "
        f"({_SEPARATOR_CHOICES}), or put double quotes around fields that contain it."
    )


@_reader(".csv", ".tsv", ".txt")
def _read_delimited(path: Path, separator: str) -> pd.DataFrame:
    """Delimited text, UTF-8 with or without a byte-order mark, standard double-quote quoting (so quoted
    fields may hold separators and newlines); every cell a string, empty cells missing. A row with more
    fields than the header is an error, never a shifted or cut row."""
    origin = "from prepare.separator"
    if separator == "auto":
        separator, origin = sniff_separator(path), "sniffed"
    try:
        with warnings.catch_warnings():  # its one ParserWarning is for a long first row, checked below
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, na_values=[""],
                                encoding="utf-8-sig", index_col=False)
    except UnicodeDecodeError as error:
        raise DataError(_not_utf8(path, error, "re-save it as UTF-8 (Excel: Save As 'CSV UTF-8')")) from error
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one example.") from error
    except pd.errors.ParserError as error:
        match = _FIELD_COUNT.search(str(error))
        if match is None:
            raise DataError(f"{path}: cannot be parsed as delimited text ({_one_line(error)}); fix the file's "
                            f"format.") from error
        expected, record, saw = map(int, match.groups())
        raise _too_many_fields(path, _physical_line(path, separator, record), saw, expected, separator,
                               origin) from error
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: cannot be parsed as delimited text ({_one_line(error)}); fix the file's "
                        f"format.") from error
    long_row = _long_first_row(path, separator)
    if long_row is not None:
        raise _too_many_fields(path, *long_row, separator, origin)
    return frame.rename(columns=lambda name: str(name).lstrip("\ufeff"))


@_reader(".parquet", ".pq")
def _read_parquet(path: Path, separator: str) -> pd.DataFrame:
    """Parquet keeps the dtypes it was written with."""
    try:
        return pd.read_parquet(path)
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: cannot be parsed as parquet ({_one_line(error)}); fix the file's format.") from error


def _json_text(value: Any) -> Any:
    """A JSON Lines value as the text a CSV cell would hold (numbers arrive as their literal text)."""
    if value is None or value == "":
        return float("nan")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


@_reader(".jsonl", ".ndjson")
def _read_json_lines(path: Path, separator: str) -> pd.DataFrame:
    """One JSON object per line (blank lines skipped); keys are columns, values strings as in a CSV: numbers
    keep their literal text (``1`` and ``"1"`` are the same label), ``true``/``false`` stay words, ``null``
    and ``""`` are missing."""
    records = []
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line, parse_int=str, parse_float=str, parse_constant=str)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: line {number} is not valid JSON ({error.msg} at column {error.colno}); "
                                    f'write one JSON object per line, e.g. {{"text": "...", "label": "..."}}.'
                                    ) from error
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {number} holds a JSON {type(record).__name__}, not an object; "
                                    f'write one JSON object per line, e.g. {{"text": "...", "label": "..."}}.')
                records.append({str(key): _json_text(value) for key, value in record.items()})
    except UnicodeDecodeError as error:
        raise DataError(_not_utf8(path, error)) from error
    return pd.DataFrame.from_records(records).astype(str) if records else pd.DataFrame()


def _excel_text(value: Any) -> Any:
    """An Excel cell as the text its CSV export would hold: whole numbers without ``.0`` (Excel stores every
    number as a float), dates as ISO dates, booleans as TRUE/FALSE; empty cells missing."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return float("nan")
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime):
        return value.date().isoformat() if value.time() == datetime.time() else value.isoformat(sep=" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


@_reader(".xlsx")
def _read_excel(path: Path, separator: str) -> pd.DataFrame:
    """The first sheet of an Excel workbook (openpyxl), header in its first row, cells as strings."""
    import zipfile

    from openpyxl.utils.exceptions import InvalidFileException

    try:
        frame = pd.read_excel(path, sheet_name=0, engine="openpyxl", dtype=object, keep_default_na=False,
                              na_values=[""])
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, InvalidFileException) as error:
        raise DataError(f"{path}: not a readable Excel workbook ({_one_line(error)}); re-save it as .xlsx from "
                        f"Excel or LibreOffice, or export its first sheet as CSV.") from error
    frame = frame.rename(columns=lambda name: str(_excel_text(name)))
    return frame.map(_excel_text).astype(str)
