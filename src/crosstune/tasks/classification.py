"""``prepare.task: classification``: one label per example, from a fixed set of classes.

Labels are names (sorted: index i is class i; an empty name marks an unlabelled target row of the adaptation
pool, encoded :data:`crosstune.data.prepared_dir.UNLABELLED`); the head outputs one logit per class; the loss
is cross-entropy with optional class weights and label smoothing; metrics are scikit-learn's accuracy and
macro / weighted precision, recall and F1, and the headline is macro-F1, which counts every class alike on the
imbalanced sets cross-domain work meets. The probe is L-BFGS logistic regression; the export is
``AutoModelForSequenceClassification`` (``single_label_classification``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from crosstune.errors import DataError
from crosstune.tasks.base import Task

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch


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


class Classification(Task):
    """One class per example (sentiment of a review, the product in a photo, the digit spoken)."""

    name = "classification"
    output = "one class per example"
    confusion_matrix = True
    modalities = ("text", "image", "audio")
    losses = ("cross_entropy",)
    metrics = {"accuracy": True, "f1_macro": True, "f1_weighted": True, "loss": False}
    headline = "f1_macro"
    summary_metrics = ("accuracy", "f1_macro")
    baseline_metrics = ("accuracy", "f1_macro", "f1_weighted")
    card_metrics = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro")
    label_dtype = str
    hf_auto_class = "AutoModelForSequenceClassification"
    hf_problem_type = "single_label_classification"

    def read_labels(self, values: "pd.Series", path: Path) -> "pd.Series":
        return values.astype(str).str.strip()

    def check_training_labels(self, train: "pd.DataFrame", path: Path, minimum: int) -> None:
        """Every class needs ``minimum`` training examples for a stratified split and a meaningful F1."""
        counts = train["label"].value_counts()
        small = counts[counts < minimum]
        if not small.empty:
            detail = ", ".join(f"{label!r}: {count}" for label, count in small.sort_index().items())
            raise DataError(
                f"{path}: too few training examples for class(es) {detail} (need at least "
                f"prepare.min_examples_per_class={minimum}); add examples, merge or drop those classes, "
                f"or lower prepare.min_examples_per_class."
            )

    def stratify_by(self, frame: "pd.DataFrame") -> "pd.Series":
        return frame["label"]

    def label_names(self, train: "pd.DataFrame") -> list[str]:
        return sorted(train["label"].unique())

    def check_test_labels(self, test: "pd.DataFrame", labels: list[str], path: Path) -> None:
        """Test labels must all be seen in training: the head has no output for anything else."""
        from crosstune.data.tables import row_numbers

        unknown = ~test["label"].isin(labels)
        if unknown.any():
            names = sorted(set(test.loc[unknown, "label"]))
            raise DataError(
                f"{path}: label(s) {names} at row(s) {row_numbers(unknown)} never occur in the training file "
                f"(known labels: {labels}); fix the labels, add training examples for them, or drop those rows."
            )

    def check_source_domain(self, path: Path) -> None:
        """A labelled source domain's classes map onto the target's (``prepare.source_label_map``)."""

    def label_counts(self, frame: "pd.DataFrame") -> dict[str, int]:
        return {label: int(count) for label, count in frame["label"].value_counts().sort_index().items()
                if label != ""}

    def labelled_rows(self, frame: "pd.DataFrame") -> "pd.DataFrame":
        return frame[frame["label"] != ""]

    def encode_labels(self, labels: "pd.Series", names: Sequence[str]) -> "torch.Tensor":
        """Class indices; -1 for an unlabelled target row (the adaptation pool)."""
        import torch

        from crosstune.data.prepared_dir import UNLABELLED

        index = {label: position for position, label in enumerate(names)}
        return torch.tensor([index[label] if label != "" else UNLABELLED for label in labels], dtype=torch.int64)

    def labelled(self, targets: "np.ndarray") -> "np.ndarray":
        return targets >= 0

    def num_outputs(self, labels: Sequence[str]) -> int:
        return len(labels)

    def build_loss(self, name: str, class_weights: "torch.Tensor | None", label_smoothing: float) -> "torch.nn.Module":
        from crosstune.training.losses import LOSSES

        self.check_loss(name)
        return LOSSES.get(name, "finetune.loss")(class_weights, label_smoothing)

    def class_weights(self, setting: Any, targets: "torch.Tensor", num_labels: int) -> "torch.Tensor | None":
        """``finetune.class_weights`` (none, balanced or one per label) over the labelled ``targets``."""
        from crosstune.training.losses import class_weight_tensor

        return class_weight_tensor(setting, targets[targets >= 0], num_labels)

    def predictions(self, outputs: "torch.Tensor") -> tuple[list[Any], list[float]]:
        """Class indices and their softmax probabilities."""
        probabilities = outputs.softmax(dim=-1)
        confidence, predicted = probabilities.max(dim=-1)
        return predicted.tolist(), confidence.tolist()

    def score(self, targets: Sequence[Any], outputs: "torch.Tensor", labels: Sequence[str],
              per_class: bool = False) -> dict[str, float]:
        predicted, _ = self.predictions(outputs)
        return classification_metrics(list(targets), predicted, labels, per_class=per_class)

    def score_baseline(self, targets: Sequence[Any], predicted: Sequence[Any],
                       labels: Sequence[str]) -> dict[str, float]:
        index = {label: position for position, label in enumerate(labels)}
        return classification_metrics(list(targets), [index[label] for label in predicted], labels)

    def prediction_records(self, outputs: "torch.Tensor", split: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
        predicted, confidence = self.predictions(outputs)
        return [{"label": labels[index], "score": score} for index, score in zip(predicted, confidence)]

    def prediction_columns(self, outputs: "torch.Tensor", targets: "torch.Tensor",
                           labels: Sequence[str]) -> dict[str, list[Any]]:
        predicted, confidence = self.predictions(outputs)
        return {"predicted": [labels[index] for index in predicted], "confidence": confidence}

    def examples_figure(self, path: str | Path, table: "pd.DataFrame", inputs: dict[str, Any]) -> None:
        """The misclassified test examples, drawn as the modality shows them (texts, images, spectrograms)."""
        from crosstune.reporting.figures import misclassified_figure

        misclassified_figure(path, table["label"].tolist(), table["predicted"].tolist(), **inputs)

    def fit_output_layer(self, inputs: "np.ndarray", targets: "np.ndarray", num_outputs: int, strength: float,
                         class_weights: "torch.Tensor | None", seed: int) -> tuple["np.ndarray", "np.ndarray"]:
        """Multinomial logistic regression (L-BFGS) with class weights c and L2 strength 1/C:
        argmin_{W,b} sum_i c_{y_i} * -log softmax(W x_i + b)_{y_i} + ||W||^2 / (2C)."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        weights = None if class_weights is None else {index: float(w) for index, w in enumerate(class_weights.tolist())}
        probe = LogisticRegression(C=strength, max_iter=5000, class_weight=weights, random_state=seed)
        probe.fit(inputs, targets)
        coef, intercept = probe.coef_.astype(np.float64), probe.intercept_.astype(np.float64)
        if len(probe.classes_) == 2:  # one logit z for the second class: softmax([-z/2, z/2]) = sigmoid(z)
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        weight = np.zeros((num_outputs, inputs.shape[1]))
        # A class with no training row can never be predicted (a bias far below the others'), as in a fit that knew it.
        bias = np.full(num_outputs, intercept.min() - 30.0)
        weight[probe.classes_], bias[probe.classes_] = coef, intercept
        return weight, bias

    def transferability(self, score: str) -> Any:
        from crosstune.selection.scores import SCORES, SOURCE_SCORES, check_score

        check_score(score)
        return SOURCE_SCORES.get(score) if score in SOURCE_SCORES else SCORES.get(score)

    def block_transferability(self) -> Any:
        from crosstune.selection.scores import logme

        return logme

    def hf_config(self, config: Any, labels: Sequence[str]) -> None:
        if labels and len(labels) == config.num_labels:
            config.id2label = dict(enumerate(labels))
            config.label2id = {label: index for index, label in enumerate(labels)}
        config.problem_type = self.hf_problem_type

