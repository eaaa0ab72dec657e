"""`crosstune sweep KEY=V1,V2 KEY2=...`: a grid of params, each point a queued DVC experiment.

Why DVC experiments instead of an in-process loop (as Trainer's or SetFit's hyperparameter search runs):
every trial keeps its params, metrics and outputs, `dvc exp show` compares them, `dvc exp apply NAME`
brings the best into the workspace, and stages a trial did not change come from DVC's cache instead of
running again.

A trial's name is ``sweep-`` plus a hash of its overrides, so running the same sweep again on the same
commit re-queues only the trials that failed (or never ran): the ones that succeeded are read back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from crosstune.errors import ConfigError
from crosstune.experiments.dvc_queue import (
    Experiment,
    baseline_experiments,
    queue_experiment,
    remove_experiments,
    run_queue,
)
from crosstune.pipeline import metrics_files

logger = logging.getLogger(__name__)

VALIDATION_METRICS = metrics_files.TRAINING  # finetune's best epoch on the validation split
TEST_METRICS = metrics_files.TEST
LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse")


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["finetune.lr=1e-4,5e-5", "freeze.depth=0,3"]`` -> ``{"finetune.lr": ["1e-4", "5e-5"], ...}``.

    Values stay text: DVC parses each as YAML, exactly as ``dvc exp run -S`` would."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, separator, values = spec.partition("=")
        key = key.strip()
        choices = [value.strip() for value in _split_values(values) if value.strip()]
        if not separator or "." not in key or not choices:
            raise ConfigError(f"sweep {spec!r}: expected section.key=V1,V2,... (e.g. finetune.lr=1e-4,5e-5).")
        if key in grid:
            raise ConfigError(f"sweep: {key} is given twice; list all its values once: {key}=V1,V2.")
        grid[key] = choices
    if not grid:
        raise ConfigError("sweep: no params given; e.g. crosstune sweep finetune.lr=1e-4,5e-5 freeze.depth=0,3.")
    return grid


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets and quotes, so a list value (``evaluate.baselines=[majority],[]``)
    stays one value."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    return values


def grid_trials(grid: dict[str, list[str]]) -> list[list[str]]:
    """Every combination as ``-S`` overrides, in the order the grid lists keys and values."""
    return [[f"{key}={value}" for key, value in zip(grid, values)] for values in itertools.product(*grid.values())]


def trial_name(overrides: Sequence[str]) -> str:
    """A stable experiment name for one set of overrides (git ref-safe)."""
    digest = hashlib.sha256(json.dumps(sorted(overrides)).encode("utf-8")).hexdigest()[:10]
    return f"sweep-{digest}"


def default_jobs(params: dict[str, Any]) -> int:
    """As many trials at once as the machine's cores allow at ``base.num_threads`` each (0 means all of them,
    so one trial at a time); on CUDA machines, one per GPU."""
    base = params.get("base") or {}
    if base.get("device") in ("auto", "cuda", None):
        try:
            import torch

            if torch.cuda.is_available():
                return max(torch.cuda.device_count(), 1)
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(base.get("num_threads") or 0) or cores
    return max(cores // threads, 1)


@dataclass
class TrialResult:
    """One finished trial with the figures the ranking prints."""

    name: str
    overrides: list[str]
    state: str
    validation: float | None
    test: dict[str, float]
    log: str | None


def _select_metric(params: dict[str, Any]) -> str:
    from crosstune.config import FinetuneParams, from_mapping

    return from_mapping(FinetuneParams, params.get("finetune"), "finetune").select_metric


def lower_is_better(metric: str) -> bool:
    """Direction of a validation metric: the one a task declares for it (:mod:`crosstune.tasks`), else by its name."""
    from crosstune.tasks.registry import metric_direction

    declared = metric_direction(metric)
    if declared is not None:
        return not declared
    return any(metric.endswith(name) for name in LOWER_IS_BETTER)


def rank_trials(results: list[TrialResult], metric: str) -> list[TrialResult]:
    """Best validation first (highest, or lowest for a loss; ties by name, as the report ranks experiments);
    failed trials last, in the grid's order."""
    lower = lower_is_better(metric)
    finished = [result for result in results if result.validation is not None]
    finished.sort(key=lambda result: (result.validation if lower else -result.validation, result.name))
    return finished + [result for result in results if result.validation is None]


def sweep(specs: Sequence[str], jobs: int | None = None, repo: str | Path = ".", metric: str | None = None,
          timeout_seconds: float | None = None) -> tuple[list[TrialResult], str]:
    """Queue the grid (skipping trials already succeeded on this commit), run it, return it ranked by the
    validation metric (``finetune.select_metric`` unless ``metric`` is given) and that metric's name."""
    from crosstune.config import read_params_file

    params = read_params_file(Path(repo) / "params.yaml")
    grid = parse_grid(specs)
    trials = grid_trials(grid)
    metric = metric or _select_metric(params)
    jobs = jobs or default_jobs(params)
    names = [trial_name(overrides) for overrides in trials]
    existing = {experiment.name: experiment for experiment in baseline_experiments(repo)}
    kept = [name for name in names if existing.get(name) and existing[name].state == "success"]
    stale = [name for name in names if name in existing and name not in kept]
    remove_experiments(stale, repo)
    for name, overrides in zip(names, trials):
        if name not in kept:
            queue_experiment(name, overrides, repo)
    logger.info("sweep: %d trial(s) over %s; %d already done on this commit, %d queued, %d at a time",
                len(trials), ", ".join(grid), len(kept), len(trials) - len(kept), jobs)
    finished = {experiment.name: experiment for experiment in run_queue(names, jobs, repo,
                                                                          timeout_seconds=timeout_seconds)}
    results = [_result(name, overrides, finished.get(name), metric) for name, overrides in zip(names, trials)]
    return rank_trials(results, metric), metric


def _result(name: str, overrides: list[str], experiment: Experiment | None, metric: str) -> TrialResult:
    if experiment is None or experiment.state != "success":
        return TrialResult(name, overrides, experiment.state if experiment else "missing", None, {},
                           experiment.log if experiment else None)
    validation = experiment.value(VALIDATION_METRICS, f"best_validation.{metric}")
    test = {key: value for key, value in experiment.file(TEST_METRICS).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return TrialResult(name, overrides, experiment.state, None if validation is None else float(validation), test,
                       experiment.log)


def format_ranking(results: list[TrialResult], metric: str, test_keys: Sequence[str] = ("f1_macro", "accuracy")) -> str:
    """A plain-text table: rank, trial, its overrides, validation metric, test metrics (what `dvc exp show`
    holds, sorted)."""
    header = ["rank", "experiment", "params", f"validation {metric}", *[f"test {key}" for key in test_keys]]
    rows = []
    for rank, result in enumerate(results, 1):
        values = [f"{result.test[key]:.4f}" if key in result.test else "-" for key in test_keys]
        validation = f"{result.validation:.4f}" if result.validation is not None else result.state
        rows.append([str(rank) if result.validation is not None else "-", result.name, " ".join(result.overrides),
                     validation, *values])
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    failed = [result for result in results if result.validation is None]
    for result in failed:
        lines.append(f"{result.name} {result.state}: see `dvc queue logs {result.name}`"
                     + (f" ({result.log})" if result.log else "") + "; run the same sweep again to re-queue it.")
    return "\n".join(lines)
