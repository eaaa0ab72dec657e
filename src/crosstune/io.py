"""Atomic writes: an interrupted or failed stage never leaves a half-written file or directory.

Everything is written to a temporary sibling first and moved into place with ``os.replace``,
which is atomic on one filesystem; an existing output survives until its replacement is whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; move it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    temporary.chmod(0o644)  # mkstemp makes 0600; outputs are meant to be shared
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``target``; swap it in for ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    temporary.chmod(0o755)
    try:
        yield temporary
        for path in temporary.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if target.exists():
            retired = _retired(target)
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            os.replace(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _retired(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def restore_interrupted_directory(target: str | Path) -> None:
    """Undo a replacement by :func:`atomic_directory` that was killed between its two renames: the
    previous ``target`` is then intact under its retired name and goes back in place."""
    target = Path(target)
    if not target.exists() and _retired(target).is_dir():
        os.replace(_retired(target), target)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the stage that writes it first (dvc repro).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); rerun the stage that writes it.") from error


def write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as CSV (no index), atomically."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
