"""Linear probing: fit the head's output layer on the frozen pretrained model's features, in closed form.

It is two things in the pipeline. As a model of its own (the probe stage's ``models/probe``), it is what the
negative-transfer guard sets beside the fine-tuned and the scratch model. As a start (``finetune.head_init:
probe``), it is the LP of LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution" (ICLR 2022, https://arxiv.org/abs/2202.10054) show that fine-tuning from a random head
sends large, random gradients into the pretrained features while the head is still wrong, and that fitting
the head on the frozen features first avoids it.

The fit is the task's (:meth:`crosstune.tasks.base.Task.fit_output_layer`: scikit-learn's L-BFGS logistic
regression for classification, ridge regression for values), on standardised inputs of the head's output
layer z (what it sees with the model in eval mode). For classification,

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
from crosstune.tasks.base import Task

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
    from crosstune.data.text_encoding import output_rows, place_outputs
    from crosstune.transfer_model.modules import ModelForward

    forward = ModelForward(model, level)
    forward.eval()
    layer = output_layer(model.head)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    rows = torch.zeros((output_rows(split), layer.in_features), dtype=torch.float32)
    try:
        for batch in batching.evaluate(split):
            batch = batch.to(device)
            captured.clear()
            forward(**batch.inputs)
            place_outputs(rows, batch, captured[-1].float())
    finally:
        hook.remove()
    return rows.numpy()


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
                     validation_targets: np.ndarray, task: Task, labels: list[str], select_metric: str,
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
        weight, bias = task.fit_output_layer(standardised, train_targets, task.num_outputs(labels), strength,
                                             class_weights, seed)
        weight = weight / scale  # fold the standardisation into the layer
        bias = bias - weight @ mean
        metrics = _validation_metrics(weight, bias, validation_inputs, validation_targets, task, labels, loss_fn)
        tried.append({"strength": strength, **metrics})
        if best is None or task.is_better(select_metric, metrics[select_metric], best.validation[select_metric]):
            best = ProbeFit(weight.astype(np.float32), bias.astype(np.float32), strength, metrics)
    assert best is not None
    best.tried = tried
    logger.info("linear probe: C=%g validates best (%s %.4f of %s)", best.strength, select_metric,
                best.validation[select_metric], [round(row[select_metric], 4) for row in tried])
    return best


def _validation_metrics(weight: np.ndarray, bias: np.ndarray, inputs: np.ndarray, targets: np.ndarray, task: Task,
                        labels: list[str], loss_fn: torch.nn.Module) -> dict[str, float]:
    """The same metrics as training's validation (:func:`crosstune.training.loop.validation_metrics`)."""
    outputs = torch.from_numpy(inputs.astype(np.float64) @ weight.T + bias).float()
    target_tensor = task.loss_targets(torch.from_numpy(targets))
    loss = float(loss_fn(outputs, target_tensor).item())
    return {"loss": loss, **task.score(targets.tolist(), outputs, labels)}


def set_output_layer(head: torch.nn.Module, fit: ProbeFit) -> None:
    """Write the fitted weights into the head's output layer."""
    layer = output_layer(head)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(fit.weight))
        layer.bias.copy_(torch.from_numpy(fit.bias))
