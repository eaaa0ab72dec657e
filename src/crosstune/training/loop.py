"""fine-tune: the training loop over encoded (or cached) splits.

One epoch = one pass over seeded batches; after each epoch the validation split picks the best
weights by ``finetune.select_metric`` (and stops early after ``early_stopping_patience`` epochs without
improvement). Each optimizer step may accumulate several batches, clip the gradient norm and run
under bf16/fp16 autocast on a GPU. The loss is the task loss (with label smoothing) plus the weighted
regularisers of :mod:`crosstune.methods.regularizers`; gradual unfreezing (:mod:`crosstune.freezing.gradual`) and
layer-wise rates (:mod:`crosstune.training.optimization`) shape what trains how fast. With a
:class:`~crosstune.training.checkpoints.Checkpointer` the whole state is saved after every epoch and a killed
run resumes from the last complete epoch with the same final result. Training loss (every
``log_every`` steps) and validation metrics (every epoch) go to dvclive, keyed by optimizer step.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from crosstune.config import FinetuneParams
from crosstune.data.batching import Batching, Split, TextBatching
from crosstune.data.text_encoding import num_batches
from crosstune.evaluation.metrics import (
    check_select_metric,
    classification_metrics,
    is_better,
    regression_metrics,
)
from crosstune.freezing.gradual import GradualUnfreezing
from crosstune.freezing.policy import set_train_mode
from crosstune.inference.outputs import outputs_to_predictions, predict_outputs
from crosstune.io import round_metrics
from crosstune.methods.registry import ADAPTATIONS, NO_ADAPTATION
from crosstune.methods.regularizers import build_regularizers
from crosstune.model.transfer_model import ModelForward, PrefixLevel, TransferModel
from crosstune.training.checkpoints import Checkpointer, TrainState
from crosstune.training.distributed import Distributed
from crosstune.training.domain_streams import build_streams
from crosstune.training.losses import build_loss, class_weight_tensor
from crosstune.training.optimization import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

FAULT_KILL_AT_STEP = "CROSSTUNE_FAULT_KILL_AT_STEP"  # tests: SIGKILL this process after that optimizer step


@dataclass
class TrainResult:
    """What the finetune stage reports: the best epoch and its validation metrics, and the timing."""

    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    steps: int = 0
    samples_per_second: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)  # training passes only (never written to outputs)
    elapsed_at_epoch: list[float] = field(default_factory=list)  # wall time since start at each epoch's end
    stopped_early: bool = False
    resumed_from_epoch: int = 0


def validation_metrics(model: torch.nn.Module, split: Split, loss_fn: torch.nn.Module, task: str,
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


def autocast_dtype(setting: str, device: str) -> torch.dtype | None:
    """bf16 (or fp16 where bf16 is unsupported) autocast on GPUs with ``auto``; always off on CPU."""
    if not device.startswith("cuda"):
        if setting in ("bf16", "fp16"):
            logger.warning("finetune.mixed_precision: %s is for GPUs; training in float32 on %s", setting, device)
        return None
    if setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


class _Logger:
    """Sends metrics to dvclive and keeps them in the train state, so a resumed run can replay them."""

    def __init__(self, live: Any | None, state: TrainState) -> None:
        self.live, self.state = live, state

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.state.log.append([step, metrics])
        self._send(step, metrics)

    def replay(self) -> None:
        for step, metrics in self.state.log:
            self._send(step, metrics)

    def _send(self, step: int, metrics: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = step
        for name, value in round_metrics(metrics).items():
            self.live.log_metric(name, value)


def _target_loss(runner: Any, batch: Any, source_features: torch.Tensor, source_outputs: torch.Tensor,
                 loss_fn: torch.nn.Module, adaptation: torch.nn.Module | None, weight: float,
                 progress: float) -> torch.Tensor:
    """What a target batch adds: the task loss on its labelled rows (semi-supervised) and the weighted
    adaptation loss between the source batch's and its features (``progress`` in [0, 1] drives DANN's
    lambda schedule)."""
    features, outputs = runner(return_features=True, **batch.inputs)
    labelled = batch.labels >= 0
    loss = loss_fn(outputs[labelled].float(), batch.labels[labelled]) if bool(labelled.any()) \
        else outputs.sum() * 0.0
    if adaptation is not None:
        if hasattr(adaptation, "progress"):
            adaptation.progress = progress
        loss = loss + weight * adaptation(source_features.float(), features.float(), source_outputs.float(),
                                          outputs.float())
    return loss


def train(model: TransferModel, train_split: Any, validation_split: Any, params: FinetuneParams, seed: int,
          device: str, live: Any | None = None, batching: Any | None = None, level: PrefixLevel | None = None,
          checkpoint: Checkpointer | None = None, distributed: Distributed | None = None,
          source_split: Any | None = None) -> TrainResult:
    """Fine-tune ``model`` in place and leave it holding the best epoch's weights.

    Args:
        model: a model whose freeze policy is already applied.
        train_split: the target training split; with a source domain its rows labelled -1 are the
            unlabelled target pool.
        live: a ``dvclive.Live`` to log to, or None (and on ranks other than 0).
        batching: how splits become batches; default: text batches from ``params``.
        level: the splits hold cached frozen-prefix outputs at this level (:mod:`crosstune.prefix_cache.store`).
        checkpoint: save after every ``checkpoint_every`` epochs and resume a matching unfinished run.
        distributed: this process's rank in a data-parallel run.
        source_split: the labelled source domain: every step then takes a source batch and a target batch
            (:mod:`crosstune.training.domain_streams`) and adds ``finetune.adaptation``'s loss on their features.
    """
    batching = batching or TextBatching(params.batch_size, params.max_length)
    task, labels = model.spec["task"], model.spec["labels"]
    is_main = distributed is None or distributed.is_main
    check_select_metric(params.select_metric, task)
    if source_split is None and params.adaptation != NO_ADAPTATION:
        raise ValueError(f"finetune.adaptation: {params.adaptation} needs a labelled source domain; set data.source "
                         f"(prepare) to one, or finetune.adaptation: none.")
    known = train_split.labels if source_split is None else torch.cat([source_split.labels, train_split.labels])
    if task == "classification":
        known = known[known >= 0]
    weights = class_weight_tensor(params.class_weights, known, len(labels)) if task == "classification" else None
    loss_fn = build_loss(params.loss, task, weights.to(device) if weights is not None else None,
                         params.label_smoothing)
    model.to(device)
    forward = ModelForward(model, level)
    runner = distributed.wrap(forward) if distributed is not None else forward
    regularizers = build_regularizers(model, params)  # L2-SP remembers the starting (pretrained) weights
    adapting = source_split is not None and params.adaptation != NO_ADAPTATION
    streams = build_streams(source_split, train_split, batching, params.batch_size, adapting) \
        if source_split is not None else None
    batches_per_epoch = streams.batches_per_epoch if streams else num_batches(len(train_split), params.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / params.grad_accumulation)
    total_steps = steps_per_epoch * params.epochs
    unfreezing = GradualUnfreezing(model, params.unfreeze_every or steps_per_epoch) \
        if params.unfreeze == "gradual" else None
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks (and the discriminator's initial weights)
    adaptation = ADAPTATIONS.get(params.adaptation)(model.feature_dim, max(len(labels), 1)).to(device) \
        if adapting else None
    optimizer = build_optimizer(model, params, unfreezing.trainable if unfreezing else None)
    if adaptation is not None and any(True for _ in adaptation.parameters()):
        rate = params.head_lr or params.lr  # the discriminator is new, like the head
        optimizer.add_param_group({"params": list(adaptation.parameters()), "lr": rate, "initial_lr": rate,
                                   "weight_decay": params.weight_decay, "layer": -1})
    scheduler = build_scheduler(optimizer, params, total_steps)
    amp_dtype = autocast_dtype(params.mixed_precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    state = TrainState()
    best_state = _snapshot(model)
    resumed = checkpoint.resumable() if checkpoint is not None else None
    if resumed is not None:
        state = resumed
        best_state = checkpoint.restore(model, optimizer, scheduler, scaler, generator, adaptation)
        logger.info("resuming from %s after epoch %d (step %d)", checkpoint.directory, state.epoch, state.step)
    metrics_log = _Logger(live if is_main else None, state)
    metrics_log.replay()
    if unfreezing is not None:
        unfreezing.apply(state.step)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    kill_at = int(os.environ.get(FAULT_KILL_AT_STEP, "0"))

    result = TrainResult(best_epoch=state.best_epoch, best_metrics=dict(state.best_metrics),
                         resumed_from_epoch=state.epoch)
    started = time.perf_counter()
    progress = tqdm(total=steps_per_epoch * params.epochs, initial=state.step, desc="finetune", unit="step",
                    mininterval=2.0, disable=not is_main)
    for epoch in range(state.epoch + 1, params.epochs + 1):
        if state.stopped_early:
            break
        set_train_mode(model)
        if adaptation is not None:
            adaptation.train()
        running, counted = 0.0, 0
        epoch_started = time.perf_counter()
        pairs = streams.epoch(generator) if streams is not None else \
            ((batch, None) for batch in batching.train(train_split, generator))
        for index, (batch, target_batch) in enumerate(pairs):
            batch = batch.to(device)
            if distributed is not None:
                batch = distributed.shard(batch)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
                features, outputs = runner(return_features=True, **batch.inputs)
                loss = loss_fn(outputs.float(), batch.labels)
                if target_batch is not None:
                    target_batch = target_batch.to(device)
                    if distributed is not None:
                        target_batch = distributed.shard(target_batch)
                    loss = loss + _target_loss(runner, target_batch, features, outputs, loss_fn, adaptation,
                                               params.adaptation_weight, state.step / max(total_steps, 1))
                for _, weight, regularizer in regularizers:
                    loss = loss + weight * regularizer(model, features)
            scaled = loss / params.grad_accumulation
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            running, counted = running + float(loss.item()), counted + 1
            if (index + 1) % params.grad_accumulation and index + 1 < batches_per_epoch:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
            if params.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for p in trainable if p.grad is not None], params.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            progress.update(1)
            if unfreezing is not None:
                unfreezing.apply(state.step)
            if state.step % params.log_every == 0:
                progress.set_postfix(epoch=epoch, loss=f"{running / counted:.4f}")
                metrics_log.log(state.step, {"train/loss": running / counted, "train/lr": scheduler.get_last_lr()[0]})
                running, counted = 0.0, 0
            if kill_at and state.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        result.epoch_seconds.append(time.perf_counter() - epoch_started)
        metrics = validation_metrics(forward, validation_split, loss_fn, task, labels, batching, device)
        metrics["epoch"] = epoch
        result.elapsed_at_epoch.append(time.perf_counter() - started)
        state.history.append(metrics)
        state.epoch = epoch
        value = metrics[params.select_metric]
        if is_main:
            logger.info("epoch %d: validation %s", epoch,
                        ", ".join(f"{key}={val:.4f}" for key, val in metrics.items() if key != "epoch"))
        metrics_log.log(state.step, {f"validation/{key}": metrics[key]
                                     for key in ("loss", params.select_metric, "accuracy", "f1_macro", "r2", "mae")
                                     if key in metrics})
        if is_better(params.select_metric, value, state.best_value):
            state.best_value, state.best_epoch, state.best_metrics = value, epoch, dict(metrics)
            state.bad_epochs = 0
            best_state = _snapshot(model)
        else:
            state.bad_epochs += 1
            if params.early_stopping_patience and state.bad_epochs >= params.early_stopping_patience:
                state.stopped_early = True
                if is_main:
                    logger.info("early stopping: no better validation %s for %d epochs", params.select_metric,
                                state.bad_epochs)
        last = epoch == params.epochs or state.stopped_early
        if checkpoint is not None and is_main and (epoch % params.checkpoint_every == 0 or last):
            checkpoint.save(state, model, best_state, optimizer, scheduler, scaler, generator, adaptation)
    progress.close()
    if checkpoint is not None and is_main:
        checkpoint.finish()
    if unfreezing is not None:
        unfreezing.release()
    result.train_seconds = time.perf_counter() - started
    result.steps = state.step
    result.history = list(state.history)
    result.best_epoch, result.best_metrics = state.best_epoch, dict(state.best_metrics)
    result.stopped_early = state.stopped_early
    trained_epochs = len(result.epoch_seconds)
    result.samples_per_second = len(train_split) * trained_epochs / max(result.train_seconds, 1e-9)
    model.load_state_dict(best_state)
    model.eval()
    if is_main:
        logger.info("best epoch %d (%s=%.4f); %.1f s, %.1f samples/s", result.best_epoch, params.select_metric,
                    state.best_value if state.best_value is not None else float("nan"), result.train_seconds,
                    result.samples_per_second)
    return result
