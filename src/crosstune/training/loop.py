"""fine-tune: the training loop over encoded (or cached) splits.

One epoch = one pass over seeded batches; after each epoch the validation split picks the best
weights by ``finetune.select_metric``, smoothed over ``select_window`` epochs
(:mod:`crosstune.training.epoch_selection`), and stops early after ``early_stopping_patience`` settled epochs
without improvement. Each optimizer step may accumulate several batches, clip the gradient norm and run
under bf16/fp16 autocast (:mod:`crosstune.training.precision`). The loss is the task loss (with label
smoothing) plus the weighted regularisers of :mod:`crosstune.methods.regularizers`; gradual unfreezing
(:mod:`crosstune.freezing.gradual`) and layer-wise rates (:mod:`crosstune.training.optimization`) shape what
trains how fast. With a
:class:`~crosstune.training.checkpoints.Checkpointer` the whole state is saved after every epoch and a killed
run resumes from the last complete epoch with the same final result. Training loss (every
``log_every`` steps) and validation metrics (every epoch) go to dvclive, keyed by optimizer step. The task
(:mod:`crosstune.tasks`) gives the loss, the metrics and which way each is better; the
:class:`~crosstune.training.run_context.RunContext` the device, precision and data-parallel rank;
:class:`~crosstune.training.callbacks.TrainingCallback` objects see every step and epoch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from crosstune.config import FinetuneParams
from crosstune.data.batching import Batching, Split
from crosstune.data.text_encoding import num_batches
from crosstune.freezing.gradual import GradualUnfreezing
from crosstune.freezing.policy import set_train_mode
from crosstune.io import round_metrics
from crosstune.methods.registry import ADAPTATIONS, NO_ADAPTATION
from crosstune.methods.regularizers import build_regularizers
from crosstune.tasks.base import Task
from crosstune.tasks.registry import TASKS
from crosstune.training.attention_dropout import KEEP, set_attention_dropout
from crosstune.training.attention_kernel import attention_kernel
from crosstune.training.callbacks import TrainingCallback
from crosstune.training.checkpoints import Checkpointer, TrainState
from crosstune.training.distributed import Distributed
from crosstune.training.domain_streams import build_streams
from crosstune.training.epoch_selection import settled_through, smoothed
from crosstune.training.optimization import build_optimizer, build_scheduler
from crosstune.training.precision import autocast
from crosstune.training.run_context import RunContext
from crosstune.transfer_model.modules import ModelForward, PrefixLevel, TransferModel

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """What a run trains on: the target training and validation splits (raw inputs, or the cached frozen
    prefix's outputs at ``level``), how they become batches, and the labelled source domain (None: none)."""

    train: Split
    validation: Split
    batching: Batching
    level: PrefixLevel | None = None
    source: Split | None = None


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
    precision: str = "float32"  # of the matrix products: float32, bfloat16 or float16 (finetune.mixed_precision)


def validation_metrics(model: torch.nn.Module, split: Split, loss_fn: torch.nn.Module, task: Task,
                       labels: list[str], batching: Batching, device: str) -> dict[str, float]:
    """Loss and task metrics of ``model`` (the run's :class:`ModelForward`) on ``split``, as the task computes them."""
    return task.validation_metrics(model, split, loss_fn, labels, batching, device)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


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


@dataclass
class Objective:
    """What one batch (or source + target pair) costs: task loss, adaptation loss and the regularisers.

    loss = L_task(f(x_s), y_s) [+ L_task on labelled target rows + w_a * L_adapt(h_s, h_t)]
           + sum_r w_r * Omega_r(model, h_s)
    """

    model: TransferModel
    runner: Any
    loss_fn: torch.nn.Module
    regularizers: list[tuple[str, float, torch.nn.Module]]
    adaptation: torch.nn.Module | None
    adaptation_weight: float
    distributed: Distributed | None

    def __call__(self, batch: Any, target_batch: Any | None, progress: float) -> torch.Tensor:
        features, outputs = self.runner(return_features=True, **batch.inputs)
        loss = self.loss_fn(outputs.float(), batch.labels)
        if target_batch is not None:
            loss = loss + _target_loss(self.runner, target_batch, features, outputs, self.loss_fn, self.adaptation,
                                       self.adaptation_weight, progress)
        for _, weight, regularizer in self.regularizers:
            loss = loss + weight * regularizer(self.model, features)
        return loss


@dataclass
class TrainingRun:
    """Everything built once from the params before the first epoch: the objective, the optimiser and its
    schedule, the batch streams, mixed precision and gradual unfreezing."""

    model: TransferModel
    forward: ModelForward
    objective: Objective
    batching: Batching
    streams: Any | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any | None
    amp_dtype: torch.dtype | None
    unfreezing: GradualUnfreezing | None
    generator: torch.Generator
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    task: Task
    labels: list[str]
    context: RunContext

    @property
    def adaptation(self) -> torch.nn.Module | None:
        return self.objective.adaptation


def _class_weights(params: FinetuneParams, data: TrainingData, task: Task, num_labels: int) -> torch.Tensor | None:
    """``finetune.class_weights`` over every training row (target and source domain), as the task weighs them."""
    known = data.train.labels if data.source is None else torch.cat([data.source.labels, data.train.labels])
    return task.class_weights(params.class_weights, known, num_labels)


def build_run(model: TransferModel, data: TrainingData, params: FinetuneParams, seed: int,
              context: RunContext) -> TrainingRun:
    """Set up a run (seeds first, in a fixed order: the same params give the same run)."""
    task, labels = TASKS.get(model.spec["task"]), model.spec["labels"]
    device, distributed, source_split = context.device, context.distributed, data.source
    task.check_select_metric(params.select_metric)
    if source_split is None and params.adaptation != NO_ADAPTATION:
        raise ValueError(f"finetune.adaptation: {params.adaptation} needs a labelled source domain; set data.source "
                         f"(prepare) to one, or finetune.adaptation: none.")
    weights = _class_weights(params, data, task, len(labels))
    loss_fn = task.build_loss(params.loss, weights.to(device) if weights is not None else None,
                              params.label_smoothing)
    model.to(device)
    if params.attention_dropout != KEEP:
        changed = set_attention_dropout(model, float(params.attention_dropout))
        logger.info("attention dropout %.2f in %d attention modules", float(params.attention_dropout), changed)
    forward = ModelForward(model, data.level)
    runner = distributed.wrap(forward) if distributed is not None else forward
    regularizers = build_regularizers(model, params)  # L2-SP remembers the starting (pretrained) weights
    adapting = source_split is not None and params.adaptation != NO_ADAPTATION
    streams = build_streams(source_split, data.train, data.batching, params.batch_size, adapting) \
        if source_split is not None else None
    batches_per_epoch = streams.batches_per_epoch if streams else num_batches(len(data.train), params.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / params.grad_accumulation)
    total_steps = steps_per_epoch * params.epochs
    unfreezing = GradualUnfreezing(model, params.unfreeze_every or steps_per_epoch) \
        if params.unfreeze == "gradual" else None
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks (and the discriminator's initial weights)
    adaptation = ADAPTATIONS.get(params.adaptation, "finetune.adaptation")(model.feature_dim,
                                                                           max(len(labels), 1)).to(device) \
        if adapting else None
    optimizer = build_optimizer(model, params, unfreezing.trainable if unfreezing else None)
    if adaptation is not None and any(True for _ in adaptation.parameters()):
        rate = params.head_lr or params.lr  # the discriminator is new, like the head
        optimizer.add_param_group({"params": list(adaptation.parameters()), "lr": rate, "initial_lr": rate,
                                   "weight_decay": params.weight_decay, "layer": -1})
    scheduler = build_scheduler(optimizer, params, total_steps)
    amp_dtype = context.amp_dtype
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    objective = Objective(model, runner, loss_fn, regularizers, adaptation, params.adaptation_weight, distributed)
    return TrainingRun(model, forward, objective, data.batching, streams, optimizer, scheduler, scaler, amp_dtype,
                       unfreezing, generator, batches_per_epoch, steps_per_epoch, total_steps, task, labels, context)


def _optimizer_step(run: TrainingRun, params: FinetuneParams, trainable: list[torch.nn.Parameter]) -> None:
    """Unscale (fp16), clip, step the optimiser and the schedule, clear the gradients."""
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    if params.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in trainable if p.grad is not None], params.max_grad_norm)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def train_epoch(run: TrainingRun, train_split: Any, params: FinetuneParams, state: TrainState, epoch: int,
                progress: Any, metrics_log: _Logger, trainable: list[torch.nn.Parameter],
                callbacks: Sequence[TrainingCallback] = ()) -> None:
    """One pass over the training batches: forward, loss, backward, and an optimiser step every
    ``grad_accumulation`` batches; the training loss is logged every ``log_every`` steps."""
    device, distributed = run.context.device, run.context.distributed
    set_train_mode(run.model)
    if run.adaptation is not None:
        run.adaptation.train()
    running, counted = 0.0, 0
    pairs = run.streams.epoch(run.generator) if run.streams is not None else \
        ((batch, None) for batch in run.batching.train(train_split, run.generator))
    for index, (batch, target_batch) in enumerate(pairs):
        batch = batch.to(device)
        if distributed is not None:
            batch = distributed.shard(batch)
        if target_batch is not None:
            target_batch = target_batch.to(device)
            if distributed is not None:
                target_batch = distributed.shard(target_batch)
        step_inputs = (batch.inputs,) if target_batch is None else (batch.inputs, target_batch.inputs)
        with autocast(device, run.amp_dtype), attention_kernel(device, run.amp_dtype, *step_inputs):
            loss = run.objective(batch, target_batch, state.step / max(run.total_steps, 1))
        scaled = loss / params.grad_accumulation
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        running, counted = running + float(loss.item()), counted + 1
        if (index + 1) % params.grad_accumulation and index + 1 < run.batches_per_epoch:
            continue
        _optimizer_step(run, params, trainable)
        state.step += 1
        progress.update(1)
        if run.unfreezing is not None:
            run.unfreezing.apply(state.step)
        if state.step % params.log_every == 0:
            progress.set_postfix(epoch=epoch, loss=f"{running / counted:.4f}")
            metrics_log.log(state.step, {"train/loss": running / counted,
                                         "train/lr": run.scheduler.get_last_lr()[0]})
            running, counted = 0.0, 0
        if run.context.is_main:
            for callback in callbacks:
                callback.on_step(state.step)


def end_epoch(run: TrainingRun, validation_split: Any, params: FinetuneParams, state: TrainState, epoch: int,
              metrics_log: _Logger, best_state: dict[str, torch.Tensor],
              pending: dict[int, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Validate; settle every epoch whose smoothed ``select_metric`` is now final, keeping the best one's
    weights; decide early stopping. ``pending`` holds the weights of the epochs not settled yet (with a
    window of 1 there are none: the epoch settles at once). Returns the best weights so far."""
    device, is_main = run.context.device, run.context.is_main
    with autocast(device, run.amp_dtype):
        metrics = validation_metrics(run.forward, validation_split, run.objective.loss_fn, run.task, run.labels,
                                     run.batching, device)
    metrics["epoch"] = epoch
    state.history.append(metrics)
    state.epoch = epoch
    if is_main:
        logger.info("epoch %d: validation %s", epoch,
                    ", ".join(f"{key}={val:.4f}" for key, val in metrics.items() if key != "epoch"))
    metrics_log.log(state.step, {f"validation/{key}": metrics[key]
                                 for key in ("loss", params.select_metric, *run.task.summary_metrics)
                                 if key in metrics})
    half = params.select_window // 2
    if half:
        pending[epoch] = _snapshot(run.model)
    values = [row[params.select_metric] for row in state.history]
    through = settled_through(epoch, half, ended=epoch == params.epochs)
    while state.selected_through < through:
        settled = state.selected_through + 1
        state.selected_through = settled
        weights = pending.pop(settled, None)
        value = smoothed(values, settled, half)
        if run.task.is_better(params.select_metric, value, state.best_value):
            state.best_value, state.best_epoch = value, settled
            state.best_metrics = dict(state.history[settled - 1])
            state.bad_epochs = 0
            best_state = weights if weights is not None else _snapshot(run.model)
            continue
        state.bad_epochs += 1
        if params.early_stopping_patience and state.bad_epochs >= params.early_stopping_patience \
                and not state.stopped_early:
            state.stopped_early = True
            through = settled_through(epoch, half, ended=True)  # no epoch comes after: settle the rest now
            if is_main:
                logger.info("early stopping: no better validation %s for %d epochs", params.select_metric,
                            state.bad_epochs)
    return best_state


def train(model: TransferModel, data: TrainingData, params: FinetuneParams, seed: int, context: RunContext,
          live: Any | None = None, checkpoint: Checkpointer | None = None,
          callbacks: Sequence[TrainingCallback] = ()) -> TrainResult:
    """Fine-tune ``model`` in place and leave it holding the best epoch's weights.

    Args:
        model: a model whose freeze policy is already applied.
        data: the splits and their batching; with a source domain every step takes a source batch and a target
            batch (:mod:`crosstune.training.domain_streams`) and adds ``finetune.adaptation``'s loss on their
            features, and the target training split's rows labelled -1 are the unlabelled target pool.
        context: the device, precision and data-parallel rank (:func:`crosstune.training.run_context.training_context`).
        live: a ``dvclive.Live`` to log to, or None (and on ranks other than 0).
        checkpoint: save after every ``checkpoint_every`` epochs and resume a matching unfinished run.
        callbacks: told of every optimizer step and every epoch's validation metrics on the main process
            (`crosstune tune` reports to its Optuna trial there, :mod:`crosstune.experiments.trial_pruning`, and
            may stop the run).
    """
    is_main = context.is_main
    run = build_run(model, data, params, seed, context)
    state = TrainState()
    best_state = _snapshot(model)
    pending: dict[int, dict[str, torch.Tensor]] = {}  # weights of the epochs whose smoothed value is not final
    resumed = checkpoint.resumable() if checkpoint is not None else None
    if resumed is not None:
        state = resumed
        best_state, pending = checkpoint.restore(model, run.optimizer, run.scheduler, run.scaler, run.generator,
                                                 run.adaptation)
        logger.info("resuming from %s after epoch %d (step %d)", checkpoint.directory, state.epoch, state.step)
    metrics_log = _Logger(live if is_main else None, state)
    metrics_log.replay()
    if run.unfreezing is not None:
        run.unfreezing.apply(state.step)
    trainable = [p for group in run.optimizer.param_groups for p in group["params"]]

    result = TrainResult(best_epoch=state.best_epoch, best_metrics=dict(state.best_metrics),
                         resumed_from_epoch=state.epoch, precision=context.precision)
    started = time.perf_counter()
    progress = tqdm(total=run.steps_per_epoch * params.epochs, initial=state.step, desc="finetune", unit="step",
                    mininterval=2.0, disable=not is_main)
    for epoch in range(state.epoch + 1, params.epochs + 1):
        if state.stopped_early:
            break
        epoch_started = time.perf_counter()
        train_epoch(run, data.train, params, state, epoch, progress, metrics_log, trainable, callbacks)
        result.epoch_seconds.append(time.perf_counter() - epoch_started)
        best_state = end_epoch(run, data.validation, params, state, epoch, metrics_log, best_state, pending)
        result.elapsed_at_epoch.append(time.perf_counter() - started)
        if is_main:
            for callback in callbacks:
                callback.on_epoch(epoch, state.history[-1])
        last = epoch == params.epochs or state.stopped_early
        if checkpoint is not None and is_main and (epoch % params.checkpoint_every == 0 or last):
            checkpoint.save(state, model, best_state, run.optimizer, run.scheduler, run.scaler, run.generator,
                            run.adaptation, pending)
    progress.close()
    if checkpoint is not None and is_main:
        checkpoint.finish()
    if run.unfreezing is not None:
        run.unfreezing.release()
    return _finish(result, state, model, best_state, params, data.train, started, is_main)


def _finish(result: TrainResult, state: TrainState, model: TransferModel, best_state: dict[str, torch.Tensor],
            params: FinetuneParams, train_split: Any, started: float, is_main: bool) -> TrainResult:
    """Load the best epoch's weights and fill in the result."""
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
        logger.info("best epoch %d (%s=%.4f, mean over a window of %d epochs); %.1f s, %.1f samples/s",
                    result.best_epoch, params.select_metric,
                    state.best_value if state.best_value is not None else float("nan"), params.select_window,
                    result.train_seconds, result.samples_per_second)
    return result
