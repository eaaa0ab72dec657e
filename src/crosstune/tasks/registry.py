"""``TASKS``: every task by its ``prepare.task`` name, and the questions asked of tasks as a family.

Torch-free: importing this module imports the task modules, which import nothing heavy.
"""

from __future__ import annotations

from crosstune.registry import Registry
from crosstune.tasks.base import Task
from crosstune.tasks.classification import Classification
from crosstune.tasks.detection import Detection
from crosstune.tasks.regression import Regression
from crosstune.tasks.token_classification import TokenClassification
from crosstune.tasks.transcription import Transcription

TASKS: Registry[Task] = Registry("task")
for _task in (Classification(), Regression(), TokenClassification(), Transcription(), Detection()):
    TASKS.register(_task.name)(_task)


def get_task(name: str) -> Task:
    """The task called ``name`` (``prepare.task``); an unknown name is a ConfigError naming the key and listing
    the valid ones."""
    return TASKS.get(name, "prepare.task")


def metric_direction(metric: str) -> bool | None:
    """Whether a higher ``metric`` is better, as the tasks that declare it say (None: no task declares it).
    Sweeps, tune and reports rank by it, so a lower-is-better metric (a loss, an error rate) ranks the right way."""
    directions = {TASKS.get(name).metrics[metric] for name in TASKS if metric in TASKS.get(name).metrics}
    if len(directions) > 1:
        raise ValueError(f"tasks disagree on whether a higher {metric!r} is better; give one direction per name")
    return directions.pop() if directions else None
