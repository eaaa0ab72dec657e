"""Linear probing: fit the head's output layer on the frozen pretrained model's features, in closed form.

It is two things in the pipeline. As a model of its own (the probe stage's ``models/probe``), it is what the
negative-transfer guard sets beside the fine-tuned and the scratch model. As a start (``finetune.head_init:
probe``), it is the LP of LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution" (ICLR 2022, https://arxiv.org/abs/2202.10054) show that fine-tuning from a random head
sends large, random gradients into the pretrained features while the head is still wrong, and that fitting
the head on the frozen features first avoids it.

The fit is scikit-learn's L-BFGS logistic regression (classification) or ridge regression, on standardised
inputs of the head's output layer z (what it sees with the model in eval mode). For classification,

    W*, b* = argmin_{W,b}  sum_i c_{y_i} * -log softmax(W z~_i + b)_{y_i}  +  ||W||^2 / (2C),
    z~ = (z - mu) / sigma,

with the class weights c of ``finetune.class_weights`` and C chosen on validation by ``finetune.select_metric``
among :data:`PROBE_STRENGTHS`. The standardisation is folded into the layer, W = W* / sigma and
b = b* - W mu, so the layer takes the raw z as fine-tuning will.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crosstune.data.batching import Batching, Split
from crosstune.evaluation.metrics import (
    classification_metrics,
    is_better,
    regression_metrics,
)

logger = logging.getLogger(__name__)

# Inverse L2 strength C (ridge: alpha = 1 / C) tried on validation, weakest regularisation last.
PROBE_STRENGTHS = (0.001, 0.01, 0.1, 1.0, 10.0)


def output_layer(head: torch.nn.Module) -> torch.nn.Linear:
    """The head's last linear layer (a linear head's only one; the classifier of an MLP or stock HF head)."""
    layers = [module for module in head.modules() if isinstance(module, torch.nn.Linear)]
    if not layers:
        raise ValueError(f"the head {type(head).__name__} has no linear layer to fit")
    return layers[-1]


@torch.inference_mode()
def head_inputs(model: Any, split: Split, batching: Batching, device: str, level: Any = None) -> np.ndarray:
    """What the head's output layer sees for every row of ``split``, in order, with the model in eval mode
    (``level``: the split holds the cached frozen prefix at that level, not raw inputs).

    Shape:
        -> (N, in_features) float32
    """
    from crosstune.model.transfer_model import ModelForward

    forward = ModelForward(model, level)
    forward.eval()
    layer = output_layer(model.head)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    rows = np.zeros((len(split), layer.in_features), dtype=np.float32)
    try:
        for batch in batching.evaluate(split):
            batch = batch.to(device)
            captured.clear()
            forward(**batch.inputs)
            rows[batch.indices.numpy()] = captured[-1].float().cpu().numpy()
    finally:
        hook.remove()
    return rows


@dataclass
class ProbeFit:
    """The fitted output layer (``weight`` (outputs, in_features), ``bias``), the strength C that validated
    best, and every strength's validation metrics."""

    weight: np.ndarray
    bias: np.ndarray
    strength: float
    validation: dict[str, float]
    tried: list[dict[str, float]] = field(default_factory=list)


def fit_output_layer(train_inputs: np.ndarray, train_targets: np.ndarray, validation_inputs: np.ndarray,
                     validation_targets: np.ndarray, task: str, labels: list[str], select_metric: str,
                     class_weights: torch.Tensor | None, loss_fn: torch.nn.Module, seed: int) -> ProbeFit:
    """Fit the layer at each of :data:`PROBE_STRENGTHS`; keep the best on validation by ``select_metric``
    (ties: the stronger regularisation, tried first)."""
    mean = train_inputs.mean(axis=0, dtype=np.float64)
    scale = train_inputs.std(axis=0, dtype=np.float64)
    scale[scale < 1e-8] = 1.0
    standardised = (train_inputs - mean) / scale
    best: ProbeFit | None = None
    tried = []
    for strength in PROBE_STRENGTHS:
        weight, bias = _fit(standardised, train_targets, task, len(labels), strength, class_weights, seed)
        weight = weight / scale  # fold the standardisation into the layer
        bias = bias - weight @ mean
        metrics = _validation_metrics(weight, bias, validation_inputs, validation_targets, task, labels, loss_fn)
        tried.append({"strength": strength, **metrics})
        if best is None or is_better(select_metric, metrics[select_metric], best.validation[select_metric]):
            best = ProbeFit(weight.astype(np.float32), bias.astype(np.float32), strength, metrics)
    assert best is not None
    best.tried = tried
    logger.info("linear probe: C=%g validates best (%s %.4f of %s)", best.strength, select_metric,
                best.validation[select_metric], [round(row[select_metric], 4) for row in tried])
    return best


def _fit(inputs: np.ndarray, targets: np.ndarray, task: str, num_labels: int, strength: float,
         class_weights: torch.Tensor | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (outputs, features), bias) of one scikit-learn fit on standardised ``inputs``."""
    if task != "classification":
        from sklearn.linear_model import Ridge

        ridge = Ridge(alpha=1.0 / strength).fit(inputs, targets.astype(np.float64))
        return ridge.coef_.reshape(1, -1).astype(np.float64), np.atleast_1d(ridge.intercept_).astype(np.float64)
    from sklearn.linear_model import LogisticRegression

    weights = None if class_weights is None else {index: float(w) for index, w in enumerate(class_weights.tolist())}
    probe = LogisticRegression(C=strength, max_iter=5000, class_weight=weights, random_state=seed)
    probe.fit(inputs, targets)
    coef, intercept = probe.coef_.astype(np.float64), probe.intercept_.astype(np.float64)
    if len(probe.classes_) == 2:  # one logit z for the second class: softmax([-z/2, z/2]) = sigmoid(z)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_labels, inputs.shape[1]))
    # A class with no training row can never be predicted (a bias far below the others'), as in a fit that knew it.
    bias = np.full(num_labels, intercept.min() - 30.0)
    weight[probe.classes_], bias[probe.classes_] = coef, intercept
    return weight, bias


def _validation_metrics(weight: np.ndarray, bias: np.ndarray, inputs: np.ndarray, targets: np.ndarray, task: str,
                        labels: list[str], loss_fn: torch.nn.Module) -> dict[str, float]:
    """The same metrics as training's validation (:func:`crosstune.training.loop.validation_metrics`)."""
    outputs = torch.from_numpy(inputs.astype(np.float64) @ weight.T + bias).float()
    target_tensor = torch.from_numpy(targets)
    loss = float(loss_fn(outputs, target_tensor).item())
    if task == "classification":
        return {"loss": loss, **classification_metrics(targets.tolist(), outputs.argmax(1).tolist(), labels)}
    return {"loss": loss, **regression_metrics(targets.tolist(), outputs[:, 0].tolist())}


def set_output_layer(head: torch.nn.Module, fit: ProbeFit) -> None:
    """Write the fitted weights into the head's output layer."""
    layer = output_layer(head)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(fit.weight))
        layer.bias.copy_(torch.from_numpy(fit.bias))
