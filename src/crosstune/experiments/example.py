"""``crosstune example PRESET``: run a params preset as a named DVC experiment, then put the workspace back.

``dvc exp run -S ...`` leaves the experiment applied to the workspace (params.yaml, dvc.lock and metrics/ differ
from the commit), so ``git status`` after ``make repro EXAMPLE=asr`` would list a dozen changed files. The run is
kept as a DVC experiment (``dvc exp show`` lists it, ``dvc exp apply NAME`` brings it back), so once its test
metrics are printed the workspace returns to the commit: tracked files from git, pipeline outputs from the DVC
cache. ``--keep`` leaves the experiment applied instead, to open its report or models straight away.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from crosstune.config import read_params_file
from crosstune.errors import CrosstuneError
from crosstune.pipeline import metrics_files

logger = logging.getLogger(__name__)

TEST_METRICS = metrics_files.TEST


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _untracked(repo: Path) -> set[str]:
    return set(_git(repo, "ls-files", "--others", "--exclude-standard", "-z").split("\0")) - {""}


def preset_overrides(path: str) -> list[str]:
    """``["-S", "section.key=value", ...]`` for every leaf of a params preset file (values as JSON,
    which DVC's YAML parser reads back exactly)."""
    preset = read_params_file(path)
    arguments: list[str] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            arguments.extend(["-S", f"{prefix}={json.dumps(value)}"])

    walk("", preset)
    return arguments


def format_metrics(path: str | Path) -> str:
    """One line per test metric of ``metrics/eval.json``, as ``make repro`` prints them."""
    lines = []
    for key, value in json.loads(Path(path).read_text(encoding="utf-8")).items():
        lines.append(f"  {key:40s} {value:.4f}" if isinstance(value, float) else f"  {key:40s} {value}")
    return "\n".join(lines)


def experiment_name(preset: str | Path) -> str:
    """``<preset stem>-<UTC time>``: a valid git ref name, new on every run, that says which preset made it."""
    return f"{Path(preset).stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def restore_workspace(repo: Path, untracked_before: set[str]) -> None:
    """Tracked files back to HEAD, files the run created removed, pipeline outputs checked out to HEAD's dvc.lock.

    ``dvc checkout`` can only restore outputs that are in the cache (a fresh clone that never ran the default has
    none): the rest stay as the experiment left them, ignored by git, and ``dvc repro`` rebuilds them."""
    _git(repo, "checkout", "HEAD", "--", ".")
    for created in sorted(_untracked(repo) - untracked_before):
        (repo / created).unlink(missing_ok=True)
    completed = subprocess.run([sys.executable, "-m", "dvc", "checkout", "--quiet"], cwd=repo, check=False,
                               capture_output=True, text=True)
    if completed.returncode:
        logger.info("the commit's pipeline outputs are not all in the DVC cache (this clone never ran the default), "
                    "so the workspace keeps the example's; `dvc repro` rebuilds the default's")


def run_example(preset: str | Path, dvc_args: Sequence[str] = (), keep: bool = False, repo: str | Path = ".") -> str:
    """Run ``preset`` as the experiment :func:`experiment_name` names, print its test metrics, and (unless
    ``keep``) return the workspace to the commit. Returns the experiment's name."""
    from crosstune.checks import run_check

    repo = Path(repo)
    changed = _git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()
    if changed and not keep:
        files = ", ".join(line[3:] for line in changed[:5])
        raise CrosstuneError(f"crosstune example: the workspace has uncommitted changes ({files}); "
                             f"commit or stash them first (the example runs as a DVC experiment and then returns the "
                             f"workspace to the commit), or pass --keep to run on top of them and leave the result "
                             f"applied.")
    overrides = preset_overrides(str(preset))
    run_check(str(repo / "params.yaml"), overrides[1::2])
    name = experiment_name(preset)
    untracked_before = _untracked(repo)
    command = [sys.executable, "-m", "dvc", "exp", "run", "--name", name, *overrides, *dvc_args]
    logger.info("running %s", " ".join(command[2:]))
    completed = subprocess.run(command, cwd=repo, check=False)
    if completed.returncode:
        raise CrosstuneError(f"`dvc exp run` with {preset} failed (exit {completed.returncode}); see its output "
                             f"above. The workspace holds what the run left; `git checkout -- . && dvc checkout` "
                             f"returns it to the commit.")
    print(f"Test-split metrics of experiment {name} ({TEST_METRICS}):")
    print(format_metrics(repo / TEST_METRICS))
    if keep:
        print("The experiment is applied to the workspace (make report shows it); `git checkout -- . && dvc "
              "checkout` returns to the commit.")
        return name
    restore_workspace(repo, untracked_before)
    print(f"Saved as DVC experiment {name}, the workspace is back at the commit: `dvc exp show` compares it, "
          f"`dvc exp apply {name}` brings its params, metrics and models back (then `make report`).")
    return name
