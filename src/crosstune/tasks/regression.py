"""``prepare.task: regression``: one number per text (a rating, a score, a dose).

Labels are numbers; the head outputs one value; the loss is mean squared error; metrics are scikit-learn's
MSE, MAE and R², and the headline is R² (1 = perfect, 0 = no better than the mean). The probe is ridge
regression; the export is ``AutoModelForSequenceClassification`` with ``problem_type: regression``, as
Hugging Face's own regression fine-tuning saves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from crosstune.errors import ConfigError, DataError
from crosstune.tasks.base import Task

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Mean squared and absolute error and R²."""
    import numpy as np
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return {"mse": float(mean_squared_error(y_true, y_pred)), "mae": float(mean_absolute_error(y_true, y_pred)),
            "r2": float(r2_score(y_true, y_pred))}


class Regression(Task):
    """One number per example."""

    name = "regression"
    output = "one number per example"
    modalities = ("text",)
    losses = ("mse",)
    metrics = {"r2": True, "mae": False, "loss": False}
    headline = "r2"
    summary_metrics = ("r2", "mae")
    baseline_metrics = ("mse", "mae", "r2")
    card_metrics = ("mse", "mae", "r2")
    label_dtype = "float64"
    hf_auto_class = "AutoModelForSequenceClassification"
    hf_problem_type = "regression"
    prediction_shape = '[{"value": ...}]'

    def read_labels(self, values: "pd.Series", path: Path) -> "pd.Series":
        import pandas as pd

        from crosstune.data.tables import row_numbers

        numeric = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
        if numeric.isna().any():
            raise DataError(
                f"{path}: non-numeric label at row(s) {row_numbers(numeric.isna())} but prepare.task is regression; "
                f"fix those labels or set prepare.task: classification."
            )
        return numeric.astype("float64")

    def encode_labels(self, labels: "pd.Series", names: Sequence[str]) -> "torch.Tensor":
        import torch

        return torch.tensor(labels.to_numpy(), dtype=torch.float32)

    def labelled(self, targets: "np.ndarray") -> "np.ndarray":
        import numpy as np

        return np.isfinite(targets)

    def num_outputs(self, labels: Sequence[str]) -> int:
        return 1

    def predictions(self, outputs: "torch.Tensor") -> tuple[list[Any], list[float]]:
        """The values, and NaN confidence (a regression output has none)."""
        return outputs.squeeze(-1).tolist(), [float("nan")] * len(outputs)

    def score(self, targets: Sequence[Any], outputs: "torch.Tensor", labels: Sequence[str],
              per_class: bool = False) -> dict[str, float]:
        predicted, _ = self.predictions(outputs)
        return regression_metrics(list(targets), predicted)

    def score_baseline(self, targets: Sequence[Any], predicted: Sequence[Any],
                       labels: Sequence[str]) -> dict[str, float]:
        return regression_metrics(list(targets), predicted)

    def prediction_records(self, outputs: "torch.Tensor", split: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
        return [{"value": value} for value in self.predictions(outputs)[0]]

    def prediction_columns(self, outputs: "torch.Tensor", targets: "torch.Tensor",
                           labels: Sequence[str]) -> dict[str, list[Any]]:
        return {"predicted": self.predictions(outputs)[0]}

    def examples_figure(self, path: str | Path, table: "pd.DataFrame", inputs: dict[str, Any]) -> None:
        """No misclassified examples for values: the figure says so (DVC declares the file either way)."""
        from crosstune.reporting.figures import misclassified_figure

        misclassified_figure(path, [], [], texts=[])

    def fit_output_layer(self, inputs: "np.ndarray", targets: "np.ndarray", num_outputs: int, strength: float,
                         class_weights: "torch.Tensor | None", seed: int) -> tuple["np.ndarray", "np.ndarray"]:
        """Ridge regression, argmin_{w,b} ||X w + b - y||^2 + ||w||^2 / C."""
        import numpy as np
        from sklearn.linear_model import Ridge

        ridge = Ridge(alpha=1.0 / strength).fit(inputs, targets.astype(np.float64))
        return ridge.coef_.reshape(1, -1).astype(np.float64), np.atleast_1d(ridge.intercept_).astype(np.float64)

    def transferability(self, score: str) -> Any:
        """LogME in its regression form, the one score defined for numeric labels here."""
        from crosstune.selection.scores import logme

        if score != "logme":
            raise ConfigError(f"params.yaml: backbone.score: {score!r} needs class labels; with a regression task use "
                              f"backbone.score: logme.")
        return lambda features, targets: logme(features, targets, regression=True)

    def block_transferability(self) -> Any:
        return self.transferability("logme")
