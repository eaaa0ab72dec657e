"""The interface every task provides: what is predicted, and everything that follows from it.

A task (Hugging Face's ``pipeline`` tasks and AutoGluon's problem types are the models) is a typed record
with behaviour, kept in :data:`crosstune.tasks.registry.TASKS` under ``prepare.task``. The stages ask it how
to read and encode labels, how many outputs the model has, which losses and metrics suit, which metric is the
headline and which way is better, how to fit the closed-form probe, what a prediction looks like and what
the exported Hugging Face model is; they never ask which task it is. ``docs/adding-a-task.md`` lists what a
new task must provide and which files it touches.

Torch-free at import: methods import what they need, so the registry costs nothing to load (`crosstune check`,
the cache stage's plan, `--help`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from crosstune.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch


class Task:
    """What one kind of prediction needs from the pipeline.

    Class attributes (the record):
        name: the ``prepare.task`` value.
        output: what the model predicts, in words (one value per example, one label per token, ...).
        modalities: the inputs the task accepts (:mod:`crosstune.modalities`).
        losses: ``finetune.loss`` names that suit it; the first is its default.
        metrics: validation metric name -> higher is better, for ``finetune.select_metric``, sweeps and tune.
        headline: the test metric that ranks models (the guard, baselines, reports).
        summary_metrics: metrics logged every epoch and reported for the probe and the guard, in order.
        baseline_metrics: metrics reported for each baseline, in order.
        card_metrics: the test metrics an exported model's card shows.
        label_dtype: dtype of the prepared tables' ``label`` column.
        hf_auto_class, hf_problem_type: the Hugging Face model an ``head.type: hf`` export loads as.
    """

    name: ClassVar[str] = ""
    output: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ()
    losses: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[Mapping[str, bool]] = {}
    headline: ClassVar[str] = ""
    summary_metrics: ClassVar[tuple[str, ...]] = ()
    baseline_metrics: ClassVar[tuple[str, ...]] = ()
    card_metrics: ClassVar[tuple[str, ...]] = ()
    label_dtype: ClassVar[Any] = str
    hf_auto_class: ClassVar[str] = ""
    hf_problem_type: ClassVar[str] = ""

    # --- reading labels (the prepare stage) -------------------------------------------------------------

    def read_labels(self, values: "pd.Series", path: Path) -> "pd.Series":
        """The label column of one input file, validated and converted (values already non-empty)."""
        raise NotImplementedError

    def check_modality(self, modality: str, path: Path) -> None:
        """A :class:`DataError` when inputs of ``modality`` (read from ``path``) cannot be labelled for this task."""
        if modality not in self.modalities:
            from crosstune.tasks.registry import TASKS

            suitable = sorted(name for name in TASKS if modality in TASKS.get(name).modalities)
            raise DataError(f"{path}: {modality} inputs support prepare.task: {' or '.join(suitable)}, not "
                            f"{self.name}; set prepare.task to one of those.")

    def check_training_labels(self, train: "pd.DataFrame", path: Path, minimum: int) -> None:
        """Refuse training data the task cannot learn or be scored on (too few examples of a class)."""

    def stratify_by(self, frame: "pd.DataFrame") -> "pd.Series | None":
        """What held-out splits keep the proportions of (the labels), or None for a plain random split."""
        return None

    def label_names(self, train: "pd.DataFrame") -> list[str]:
        """The sorted names of the model's outputs (index i is output i), or [] when outputs are values."""
        return []

    def check_test_labels(self, test: "pd.DataFrame", labels: list[str], path: Path) -> None:
        """Refuse test labels the model cannot predict."""

    def check_source_domain(self, path: Path) -> None:
        """A :class:`DataError` when a labelled source domain cannot be used with this task."""
        raise DataError(f"{path}: a source domain needs labels to align with the target's, which prepare.task: "
                        f"{self.name} has not; set data.source to data/source (no source domain).")

    def label_counts(self, frame: "pd.DataFrame") -> dict[str, int]:
        """Examples per label for the prepare summary (nothing for values)."""
        return {}

    def labelled_rows(self, frame: "pd.DataFrame") -> "pd.DataFrame":
        """The rows of a prepared table that carry a label (not the unlabelled target pool)."""
        return frame

    # --- encoding and training ------------------------------------------------------------------------------

    def encode_labels(self, labels: "pd.Series", names: Sequence[str]) -> "torch.Tensor":
        """Training targets for a prepared label column. Shape: (N,)."""
        raise NotImplementedError

    def labelled(self, targets: "np.ndarray") -> "np.ndarray":
        """Boolean mask of the encoded ``targets`` that carry a label."""
        raise NotImplementedError

    def num_outputs(self, labels: Sequence[str]) -> int:
        """Width of the head's output: one per class, or one value."""
        raise NotImplementedError

    def check_loss(self, name: str) -> None:
        """``finetune.loss`` must be a registered loss that suits the task."""
        from crosstune.training.losses import LOSSES

        LOSSES.check(name, "finetune.loss")
        if name not in self.losses:
            raise ConfigError(f"params.yaml: finetune.loss: {name!r} does not suit a {self.name} task; use one of "
                              f"{sorted(self.losses)}.")

    def build_loss(self, name: str, class_weights: "torch.Tensor | None", label_smoothing: float) -> "torch.nn.Module":
        """The training loss ``name`` (from :data:`crosstune.training.losses.LOSSES`), checked against the task."""
        from crosstune.training.losses import LOSSES

        self.check_loss(name)
        if label_smoothing:
            raise ConfigError(f"params.yaml: finetune.label_smoothing applies to classification, not {self.name}; "
                              f"set it to 0.")
        return LOSSES.get(name, "finetune.loss")(class_weights, label_smoothing)

    def class_weights(self, setting: Any, targets: "torch.Tensor", num_labels: int) -> "torch.Tensor | None":
        """``finetune.class_weights`` as loss weights, from the encoded training ``targets`` (unlabelled rows
        included: the task knows which they are); None where weights do not apply."""
        return None

    def check_select_metric(self, name: str) -> None:
        """``finetune.select_metric`` must be one of the task's metrics."""
        if name not in self.metrics:
            raise ConfigError(f"params.yaml: finetune.select_metric: {name!r} does not apply to a {self.name} task; "
                              f"use one of {sorted(self.metrics)}.")

    def is_better(self, metric: str, candidate: float, best: float | None) -> bool:
        """Whether ``candidate`` improves on ``best`` (None: nothing yet) for ``metric``."""
        if best is None:
            return True
        return candidate > best if self.metrics[metric] else candidate < best

    def gain(self, metric: str, candidate: float, reference: float) -> float:
        """How much better ``candidate`` is than ``reference`` on ``metric`` (negative: worse), whichever way
        the metric points: the guard's ``transfer_gain`` and ``finetuning_gain`` and the gain over baselines."""
        return candidate - reference if self.metrics[metric] else reference - candidate

    # --- outputs, metrics, predictions ---------------------------------------------------------------------

    def predictions(self, outputs: "torch.Tensor") -> tuple[list[Any], list[float]]:
        """Predicted classes or values from raw outputs, and their confidence (NaN where there is none)."""
        raise NotImplementedError

    def score(self, targets: Sequence[Any], outputs: "torch.Tensor", labels: Sequence[str],
              per_class: bool = False) -> dict[str, float]:
        """The task's metrics of raw ``outputs`` against encoded ``targets``."""
        raise NotImplementedError

    def score_baseline(self, targets: Sequence[Any], predicted: Sequence[Any],
                       labels: Sequence[str]) -> dict[str, float]:
        """The task's metrics of a baseline's predictions (label names or values) against encoded ``targets``."""
        raise NotImplementedError

    def prediction_records(self, outputs: "torch.Tensor", labels: Sequence[str]) -> list[dict[str, Any]]:
        """What ``crosstune predict`` returns per input."""
        raise NotImplementedError

    def prediction_columns(self, outputs: "torch.Tensor", labels: Sequence[str]) -> dict[str, list[Any]]:
        """The columns the evaluate stage adds to the test table (``metrics/predictions.csv``)."""
        raise NotImplementedError

    def examples_figure(self, path: str | Path, table: "pd.DataFrame", inputs: dict[str, Any]) -> None:
        """The evaluate stage's picture of test examples (``inputs``: the modality's, for drawing them)."""
        raise NotImplementedError

    # --- the closed-form probe ------------------------------------------------------------------------------

    def fit_output_layer(self, inputs: "np.ndarray", targets: "np.ndarray", num_outputs: int, strength: float,
                         class_weights: "torch.Tensor | None", seed: int) -> tuple["np.ndarray", "np.ndarray"]:
        """(weight (outputs, features), bias) of the head's output layer fitted in closed form on standardised
        ``inputs`` with inverse regularisation ``strength`` (the probe stage)."""
        raise NotImplementedError

    # --- selection -----------------------------------------------------------------------------------------

    def transferability(self, score: str) -> Any:
        """The ``backbone.score`` function ``(features, labels) -> float`` for this task's labels."""
        raise NotImplementedError

    def block_transferability(self) -> Any:
        """LogME for this task's labels: the per-block score ``freeze.depth: auto`` reads."""
        raise NotImplementedError

    # --- export ---------------------------------------------------------------------------------------------

    def hf_config(self, config: Any, labels: Sequence[str]) -> None:
        """Set the task's fields (label maps, problem type) on a Hugging Face model config, in place."""
        config.problem_type = self.hf_problem_type
