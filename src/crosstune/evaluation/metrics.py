"""Metrics for classification and regression, computed with scikit-learn."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Metric name -> (task, higher is better). The validation metric that picks the best epoch.
SELECT_METRICS = {
    "accuracy": ("classification", True),
    "f1_macro": ("classification", True),
    "f1_weighted": ("classification", True),
    "loss": ("any", False),
    "mae": ("regression", False),
    "r2": ("regression", True),
}


def check_select_metric(name: str, task: str) -> None:
    """Refuse a classification metric for regression and vice versa."""
    metric_task, _ = SELECT_METRICS[name]
    if metric_task not in ("any", task):
        suitable = sorted(key for key, (kind, _) in SELECT_METRICS.items() if kind in ("any", task))
        raise ValueError(
            f"params.yaml: finetune.select_metric: {name!r} does not apply to a {task} task; use one of {suitable}."
        )


def is_better(name: str, candidate: float, best: float | None) -> bool:
    """Whether ``candidate`` improves on ``best`` for metric ``name``."""
    if best is None:
        return True
    return candidate > best if SELECT_METRICS[name][1] else candidate < best


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str],
                           per_class: bool = False) -> dict[str, float]:
    """Accuracy and macro/weighted precision, recall and F1; per-class values on request."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    indices = list(range(len(labels)))
    result = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=indices, average=average, zero_division=0
        )
        result.update({f"precision_{average}": float(precision), f"recall_{average}": float(recall),
                       f"f1_{average}": float(f1)})
    if per_class:
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=indices, average=None, zero_division=0
        )
        for index, label in enumerate(labels):
            result.update({f"{label}_precision": float(precision[index]), f"{label}_recall": float(recall[index]),
                           f"{label}_f1": float(f1[index]), f"{label}_support": int(support[index])})
    return result


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Mean squared and absolute error and R²."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return {"mse": float(mean_squared_error(y_true, y_pred)), "mae": float(mean_absolute_error(y_true, y_pred)),
            "r2": float(r2_score(y_true, y_pred))}
