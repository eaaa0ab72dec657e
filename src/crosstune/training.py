"""fine-tune: the training loop over encoded splits.

One epoch = one pass over length-bucketed, seeded batches; after each epoch the validation split
picks the best weights by ``finetune.select_metric``. Training loss (every ``log_every`` steps) and
validation metrics (every epoch) go to dvclive, keyed by optimizer step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from crosstune.config import FinetuneParams
from crosstune.batching import Batching, Split, TextBatching
from crosstune.encoding import num_batches
from crosstune.freezing import set_train_mode
from crosstune.inference import outputs_to_predictions, predict_outputs
from crosstune.losses import build_loss, class_weight_tensor
from crosstune.metrics import check_select_metric, classification_metrics, is_better, regression_metrics
from crosstune.modeling import TransferModel
from crosstune.optimization import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What the finetune stage reports: the best epoch and its validation metrics, and the timing."""

    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    steps: int = 0
    samples_per_second: float = 0.0


def validation_metrics(model: TransferModel, split: Split, loss_fn: torch.nn.Module, task: str,
                       labels: list[str], batching: Batching, device: str) -> dict[str, float]:
    """Loss and task metrics of ``model`` on ``split``."""
    outputs = predict_outputs(model, split, batching, device, batching.batch_size * 2)
    targets = split.labels
    loss = float(loss_fn(outputs.to(device), targets.to(device)).item())
    predictions, _ = outputs_to_predictions(outputs, task)
    if task == "classification":
        metrics = classification_metrics(targets.tolist(), predictions, labels)
    else:
        metrics = regression_metrics(targets.tolist(), predictions)
    return {"loss": loss, **metrics}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def train(model: TransferModel, train_split: Split, validation_split: Split,
          params: FinetuneParams, seed: int, device: str, live: Any | None = None,
          batching: Batching | None = None) -> TrainResult:
    """Fine-tune ``model`` in place and leave it holding the best epoch's weights.

    Args:
        model: a model whose freeze policy is already applied.
        live: a ``dvclive.Live`` to log to, or None.
        batching: how splits become batches; default: text batches from ``params``.
    """
    batching = batching or TextBatching(params.batch_size, params.max_length)
    task, labels = model.spec["task"], model.spec["labels"]
    check_select_metric(params.select_metric, task)
    weights = class_weight_tensor(params.class_weights, train_split.labels, len(labels)) if task == "classification" else None
    loss_fn = build_loss(params.loss, task, weights.to(device) if weights is not None else None)
    model.to(device)
    optimizer = build_optimizer(model, params)
    steps_per_epoch = num_batches(len(train_split), params.batch_size)
    scheduler = build_scheduler(optimizer, params, steps_per_epoch * params.epochs)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks

    best_value: float | None = None
    result = TrainResult(best_epoch=0, best_metrics={})
    best_state = _snapshot(model)
    step, started = 0, time.perf_counter()
    progress = tqdm(total=steps_per_epoch * params.epochs, desc="finetune", unit="step", mininterval=2.0)
    for epoch in range(1, params.epochs + 1):
        set_train_mode(model)
        running, counted = 0.0, 0
        for batch in batching.train(train_split, generator):
            batch = batch.to(device)
            loss = loss_fn(model(**batch.inputs), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            running, counted = running + float(loss.item()), counted + 1
            progress.update(1)
            if step % params.log_every == 0:
                progress.set_postfix(epoch=epoch, loss=f"{running / counted:.4f}")
                if live is not None:
                    live.step = step
                    live.log_metric("train/loss", running / counted)
                    live.log_metric("train/lr", scheduler.get_last_lr()[0])
                running, counted = 0.0, 0
        metrics = validation_metrics(model, validation_split, loss_fn, task, labels, batching, device)
        metrics["epoch"] = epoch
        result.history.append(metrics)
        value = metrics[params.select_metric]
        logger.info("epoch %d: validation %s", epoch,
                    ", ".join(f"{key}={val:.4f}" for key, val in metrics.items() if key != "epoch"))
        if live is not None:
            live.step = step
            for key in ("loss", params.select_metric, "accuracy", "f1_macro", "r2", "mae"):
                if key in metrics:
                    live.log_metric(f"validation/{key}", metrics[key])
        if is_better(params.select_metric, value, best_value):
            best_value, result.best_epoch, result.best_metrics = value, epoch, dict(metrics)
            best_state = _snapshot(model)
    progress.close()
    result.train_seconds = time.perf_counter() - started
    result.steps = step
    result.samples_per_second = len(train_split) * params.epochs / max(result.train_seconds, 1e-9)
    model.load_state_dict(best_state)
    model.eval()
    logger.info("best epoch %d (%s=%.4f); %.1f s, %.1f samples/s", result.best_epoch, params.select_metric,
                best_value, result.train_seconds, result.samples_per_second)
    return result
