"""Per-epoch validation metric to an Optuna trial, for `crosstune tune`'s median pruning.

`crosstune tune` runs each trial as a DVC experiment (`dvc exp run --temp`) and names the Optuna trial in
the environment variable below; the finetune stage then reports every epoch's validation metric to the
study's storage and stops when the pruner says the trial cannot beat the median of earlier trials at the
same epoch (Optuna's ``MedianPruner``: prune at step t when the trial's value is worse than the median of
completed trials' values at t). Without the variable (every ordinary `dvc repro`) nothing is reported
and optuna is never imported, so the stage's outputs never depend on it: a pruned trial fails and
leaves no experiment; a completed one is exactly what `dvc exp run` with the same params gives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from crosstune.errors import CrosstuneError
from crosstune.training.callbacks import TrainingCallback

TRIAL_ENVIRONMENT = "CROSSTUNE_TUNE_TRIAL"  # JSON: storage URL, study name, trial id, pruner settings
PRUNED_MESSAGE = "pruned by Optuna's median pruner"  # what `crosstune tune` looks for in a failed trial's output


class TrialPruned(CrosstuneError):
    """The tuning study's pruner stopped this trial: its validation metric is below the running median."""


@dataclass(frozen=True)
class TrialSpec:
    """What the finetune stage needs to find and report to its Optuna trial."""

    storage: str
    study: str
    trial_id: int
    metric: str
    n_startup_trials: int = 2  # completed trials before any pruning
    n_warmup_steps: int = 2  # steps are epochs counted from 1: pruning starts at epoch 2, never on the first alone

    def to_environment(self) -> dict[str, str]:
        return {TRIAL_ENVIRONMENT: json.dumps(self.__dict__, sort_keys=True)}


def open_storage(url: str, attempts: int = 5) -> Any:
    """Optuna's RDB storage at ``url``, safe for several processes starting at once: SQLite waits up to a
    minute for another writer's lock, and a worker that loses the race to create the tables retries and
    finds them made."""
    import time

    import optuna
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def reporter_from_environment() -> TrainingCallback | None:
    """The training callback for the trial named in ``CROSSTUNE_TUNE_TRIAL``, or None outside `crosstune tune`."""
    text = os.environ.get(TRIAL_ENVIRONMENT)
    if not text:
        return None
    try:
        spec = TrialSpec(**json.loads(text))
    except (TypeError, ValueError) as error:
        raise CrosstuneError(f"{TRIAL_ENVIRONMENT}: not a crosstune tune trial ({error}); unset it to run the stage "
                             f"outside `crosstune tune`.") from error
    return _OptunaReporter(spec)


class _OptunaReporter(TrainingCallback):
    """Reports each epoch's validation metric to the Optuna trial and stops the run when the pruner says so."""

    def __init__(self, spec: TrialSpec) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
        self.study = optuna.load_study(study_name=spec.study, storage=open_storage(spec.storage), pruner=pruner)
        self.trial: Any = optuna.trial.Trial(self.study, spec.trial_id)
        self.metric = spec.metric

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.trial.report(float(metrics[self.metric]), epoch)
        if self.trial.should_prune():
            raise TrialPruned(f"trial {self.trial.number} {PRUNED_MESSAGE} after epoch {epoch} (validation "
                              f"{self.metric}={metrics[self.metric]:.4f}); `crosstune tune` records it as pruned.")
