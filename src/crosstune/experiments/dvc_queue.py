"""A thin layer over DVC's experiment queue: queue trials, start workers, wait, read results back.

Everything goes through the `dvc` command line (`dvc exp run --queue`, `dvc queue start`,
`dvc exp show --json`), the interface DVC keeps stable, so what crosstune queued is what `dvc exp show`,
`dvc exp apply` and `dvc queue logs` show a user.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from crosstune.errors import CrosstuneError

logger = logging.getLogger(__name__)

DONE_STATES = ("success", "failed")
MAX_FAILED_POLLS = 3  # `dvc exp show` failures in a row before the wait loop gives up
EXP_SHOW_SECONDS = 120.0  # a `dvc exp show` that has not answered by then is stuck: stopped and asked again


@dataclass
class Experiment:
    """One experiment of the current baseline commit as `dvc exp show --json` reports it."""

    name: str
    rev: str
    state: str  # queued | running | success | failed (DVC's executor state)
    params: dict[str, Any] = field(default_factory=dict)  # params.yaml, as the trial ran it
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # metrics file -> its values
    log: str | None = None  # the trial's output (also `dvc queue logs NAME`)
    repo: str | Path = "."  # where the experiment's commit is, for the metrics files dvc.yaml does not declare

    def file(self, path: str) -> dict[str, Any]:
        """Metrics file ``path`` of this experiment: from `dvc exp show` when dvc.yaml declares it, else from the
        experiment's commit (the other metrics files are committed outputs, :mod:`crosstune.pipeline.metrics_files`);
        empty when absent or not yet run."""
        if path not in self.metrics:
            text = ""
            if self.state == "success" and self.rev:
                shown = subprocess.run(["git", "show", f"{self.rev}:{path}"], cwd=self.repo, capture_output=True,
                                       text=True, check=False)
                text = shown.stdout if shown.returncode == 0 else ""
            try:
                self.metrics[path] = json.loads(text) if text else {}
            except json.JSONDecodeError:
                logger.warning("%s of experiment %s is not JSON; left out", path, self.name)
                self.metrics[path] = {}
        return self.metrics[path]

    def value(self, path: str, key: str) -> Any:
        """A dotted ``key`` (``best_validation.f1_macro``) of metrics file ``path``; None when absent."""
        node: Any = self.file(path)
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def dvc_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `dvc` and the stages it runs: this Python's directory first on PATH, so a stage's
    ``python stages/...`` is the interpreter crosstune runs in (a venv's, even when it was not activated)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", **(extra or {})}


def dvc_command(*args: str) -> list[str]:
    """The venv's `dvc` (the one beside this Python) with ``args``."""
    executable = Path(sys.executable).parent / "dvc"
    return [str(executable) if executable.is_file() else "dvc", *args]


def dvc(*args: str, repo: str | Path = ".", check: bool = True,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `dvc ARGS` in ``repo``; a failure names the command and its output; past ``timeout`` seconds the
    command is killed and that is a failure too.

    The output goes through a temporary file, not a pipe: `dvc queue start` leaves a daemon behind that
    inherits the command's stdout, and reading a pipe until it closes then waits for that daemon, seen hanging
    a sweep past its timeout. Waiting for the command's own exit and then reading the file does not."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        try:
            returncode = subprocess.run(dvc_command(*args), cwd=repo, stdout=stdout, stderr=stderr,
                                        stdin=subprocess.DEVNULL, check=False, env=dvc_environment(),
                                        timeout=timeout).returncode
        except subprocess.TimeoutExpired as error:
            raise CrosstuneError(f"`dvc {' '.join(args)}` did not answer within {timeout:.0f} s in {repo}; it was "
                                 f"stopped") from error
        stdout.seek(0)
        stderr.seek(0)
        completed = subprocess.CompletedProcess(dvc_command(*args), returncode, stdout.read(), stderr.read())
    if check and completed.returncode:
        output = (completed.stderr or completed.stdout).strip().splitlines()
        raise CrosstuneError(f"`dvc {' '.join(args)}` failed in {repo} (exit {completed.returncode}): "
                             f"{output[-1] if output else 'no output'}")
    return completed


def _data(entry: dict[str, Any], kind: str) -> dict[str, Any]:
    files = (entry.get("data") or {}).get(kind) or {}
    return {path: (content or {}).get("data") or {} for path, content in files.items()}


def _exp_show(repo: str | Path) -> str:
    """`dvc exp show --json`, asked again when it fails or hangs: with a queue's workers coming and going it was
    seen waiting for ever (a futex, no CPU) in the sweep test; a fresh call answers."""
    for attempt in range(1, MAX_FAILED_POLLS + 1):
        try:
            return dvc("exp", "show", "--json", repo=repo, timeout=EXP_SHOW_SECONDS).stdout
        except CrosstuneError as error:
            if attempt == MAX_FAILED_POLLS:
                raise
            logger.info("%s; asking again", error)
    raise AssertionError("unreachable")


def baseline_experiments(repo: str | Path = ".") -> list[Experiment]:
    """The experiments of the workspace's baseline commit (HEAD), newest first, queued ones included."""
    rows = json.loads(_exp_show(repo) or "[]")
    experiments: list[Experiment] = []
    for baseline in rows:
        if baseline.get("rev") == "workspace":
            continue
        for group in baseline.get("experiments") or []:
            executor = group.get("executor") or {}
            for revision in group.get("revs") or []:
                experiments.append(Experiment(
                    name=str(revision.get("name") or group.get("name") or revision.get("rev", "")[:7]),
                    rev=str(revision.get("rev", "")),
                    state=str(executor.get("state") or ("success" if revision.get("data") else "unknown")),
                    params=_data(revision, "params").get("params.yaml", {}),
                    metrics=_data(revision, "metrics"),
                    log=(executor.get("local") or {}).get("log"),
                    repo=repo,
                ))
        break  # dvc exp show lists the workspace, then HEAD's baseline first
    return experiments


def queue_experiment(name: str, overrides: Sequence[str], repo: str | Path = ".") -> None:
    """`dvc exp run --queue -n NAME -S k=v ...`: the trial runs later in its own temporary copy."""
    arguments = [item for override in overrides for item in ("-S", override)]
    dvc("exp", "run", "--queue", "-n", name, *arguments, repo=repo)


def remove_experiments(names: Sequence[str], repo: str | Path = ".") -> None:
    """Drop failed (or stale queued) trials so their names can be queued again."""
    if names:
        dvc("queue", "remove", *names, repo=repo, check=False)
        dvc("exp", "remove", *names, repo=repo, check=False)


def run_queue(names: Sequence[str], jobs: int, repo: str | Path = ".", poll_seconds: float = 5.0,
              timeout_seconds: float | None = None, stall_polls: int = 6) -> list[Experiment]:
    """Start ``jobs`` queue workers and wait until every trial in ``names`` has succeeded or failed.

    DVC's queue worker can stop while trials are still queued (treeverse/dvc#10562: `dvc queue status` then
    shows them queued with "0 active, 0 idle" workers). When none of the trials has run for ``stall_polls``
    polls in a row while some wait, the workers are started again: `dvc queue start` starts only the ones
    missing, so this is a no-op while a worker is alive."""
    from tqdm import tqdm

    def start_workers() -> None:
        dvc("queue", "start", "-j", str(jobs), repo=repo)

    start_workers()
    started = time.monotonic()
    wanted = set(names)
    idle_polls = 0
    failed_polls = 0
    with tqdm(total=len(wanted), desc="trials", unit="trial", disable=None) as progress:
        while True:
            try:
                listed = baseline_experiments(repo)
            except CrosstuneError as error:
                # `dvc exp show` reads every trial's temporary workspace under .dvc/tmp/exps/ and fails when a
                # trial ends and DVC deletes that directory mid-read ("directory ... does not exist"): seen in
                # the sweep test; the next poll reads a settled queue.
                failed_polls += 1
                if failed_polls >= MAX_FAILED_POLLS:
                    raise
                logger.info("`dvc exp show` failed while the queue changed (%s); polling again", error)
                time.sleep(poll_seconds)
                continue
            failed_polls = 0
            experiments = [experiment for experiment in listed if experiment.name in wanted]
            done = sum(experiment.state in DONE_STATES for experiment in experiments)
            progress.update(done - progress.n)
            if done >= len(wanted):
                return experiments
            running = any(experiment.state == "running" for experiment in experiments)
            idle_polls = 0 if running else idle_polls + 1
            if idle_polls >= stall_polls:
                logger.warning("%d trial(s) queued and none running: starting the queue workers again "
                               "(a DVC worker can stop early, treeverse/dvc#10562)", len(wanted) - done)
                start_workers()
                idle_polls = 0
            if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
                raise CrosstuneError(f"{len(wanted) - done} trial(s) still running after {timeout_seconds:.0f} s; "
                                     f"see `dvc queue status`, and `dvc queue logs NAME` for one trial's output.")
            time.sleep(poll_seconds)
