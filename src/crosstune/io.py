"""Atomic writes: an interrupted or failed stage never leaves a half-written file or directory.

Everything is written to a temporary sibling first and moved into place with ``os.replace``,
which is atomic on one filesystem; an existing output survives until its replacement is whole. A writer
killed outright (``kill -9``, the OOM killer, a power cut) cannot clean up its temporary sibling: the next
writer of the same output removes it before it starts, so a rerun leaves nothing behind. A full disk while
writing is one clear line naming the output, with the previous output left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from crosstune.errors import ArtifactError

METRIC_DIGITS = 6  # significant digits of every metric written: the same run gives the same bytes anywhere
logger = logging.getLogger(__name__)


def _leftovers(target: Path) -> list[Path]:
    """The temporary siblings a killed writer of ``target`` left: only the atomic writers here make that name."""
    return [Path(found) for found in glob.glob(str(target.parent / f".{glob.escape(target.name)}.*.tmp"))]


def _sweep_leftovers(target: Path) -> None:
    for stale in _leftovers(target):
        logger.info("removing %s, left by a write of %s that was killed", stale, target)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left on device" in str(error)


def _disk_full_error(target: Path, error: BaseException) -> ArtifactError:
    free = shutil.disk_usage(target.parent).free
    return ArtifactError(f"{target}: no space left on the device while writing it ({free / 2**20:.1f} MiB free); "
                         f"the previous {target.name} is untouched. Free some space (dvc gc -w removes cached "
                         f"outputs no commit uses; dvc exp remove old experiments) and rerun.")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; move it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(target)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    temporary.chmod(0o644)  # mkstemp makes 0600; outputs are meant to be shared
    try:
        yield temporary
        os.replace(temporary, target)
    except Exception as error:
        if _disk_full(error):
            raise _disk_full_error(target, error) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``target``; swap it in for ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(target)
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as error:
        if _disk_full(error):
            raise _disk_full_error(target, error) from error
        raise
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
    except Exception as error:
        if _disk_full(error):
            raise _disk_full_error(target, error) from error
        raise
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


def round_metrics(data: Any, digits: int = METRIC_DIGITS) -> Any:
    """``data`` with every float rounded to ``digits`` significant digits (recursively).

    Why: the last bits of a float sum differ between BLAS builds and thread counts; written in full they
    make a fresh clone's metrics (and so ``dvc.lock``) differ from the committed ones in the 16th digit.
    """
    if isinstance(data, float):
        return float(f"{data:.{digits}g}") if math.isfinite(data) else data
    if isinstance(data, dict):
        return {key: round_metrics(value, digits) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [round_metrics(value, digits) for value in data]
    return data


def write_metrics(path: str | Path, data: Any) -> None:
    """Write a metrics file: JSON with floats at :data:`METRIC_DIGITS` significant digits, atomically."""
    write_json(path, round_metrics(data))


def write_metrics_csv(path: str | Path, frame: Any) -> None:
    """Write a metrics table (CSV, no index) with floats at :data:`METRIC_DIGITS` significant digits."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False, float_format=f"%.{METRIC_DIGITS}g")


def artifact_fix(path: str | Path) -> str:
    """How to get a damaged pipeline output back: ``dvc checkout`` it, or rerun the stage that writes it
    (looked up in ``dvc.yaml`` of the working directory when there is one)."""
    path = Path(path)
    if path.is_absolute() and path.resolve().is_relative_to(Path.cwd().resolve()):
        path = path.resolve().relative_to(Path.cwd().resolve())  # as dvc.yaml names it
    stage = _producing_stage(path)
    rebuild = f"`dvc repro -f {stage}`" if stage else "rerun the stage that writes it (`dvc repro -f STAGE`)"
    return f"restore it with `dvc checkout {path}` or rebuild it with {rebuild}."


def _producing_stage(path: Path) -> str | None:
    dvc_yaml = Path("dvc.yaml")
    if not dvc_yaml.is_file():
        return None
    import yaml

    try:
        stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    except yaml.YAMLError:
        return None
    try:
        target = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return None
    for name, stage in stages.items():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            out_path = Path(next(iter(out)) if isinstance(out, dict) else out)
            if target == out_path or out_path in target.parents:
                return name
    return None


def read_artifact_json(path: str | Path) -> Any:
    """Read a JSON file that a stage wrote; missing or malformed is an :class:`ArtifactError` naming the
    file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; {artifact_fix(path)}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: not valid JSON ({error}); {artifact_fix(path)}") from error


def load_tensors(path: str | Path) -> dict[str, Any]:
    """All tensors of a safetensors file; missing, truncated or corrupt is an :class:`ArtifactError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; {artifact_fix(path)}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{path}: truncated or corrupt ({error}); {artifact_fix(path)}") from error


def load_weights(module: Any, path: str | Path) -> None:
    """Load a safetensors file into ``module`` (strict); a damaged file or one whose tensors do not fit
    the module is an :class:`ArtifactError` naming the file and the fix."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; {artifact_fix(path)}")
    try:
        load_model(module, str(path), strict=True)  # handles tensors that save_model de-duplicated
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{path}: truncated or corrupt ({error}); {artifact_fix(path)}") from error
    except RuntimeError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArtifactError(f"{path}: does not match its config.json ({first_line}); "
                            f"{artifact_fix(path)}") from error


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (model weights are large)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
