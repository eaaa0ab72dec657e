"""Optimizers and learning-rate schedules by name (torch and transformers do the maths).

Factories import torch lazily so that validating ``params.yaml`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from crosstune.registry import Registry

if TYPE_CHECKING:
    import torch

    from crosstune.config import FinetuneParams

OptimizerFactory = Callable[[Iterable[dict[str, Any]], "FinetuneParams"], "torch.optim.Optimizer"]
SchedulerFactory = Callable[["torch.optim.Optimizer", int, int], "torch.optim.lr_scheduler.LRScheduler"]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
SCHEDULERS: Registry[SchedulerFactory] = Registry("scheduler")

NO_DECAY_SUFFIXES = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


@OPTIMIZERS.register("sgd")
def sgd(groups: Iterable[dict[str, Any]], params: "FinetuneParams") -> "torch.optim.Optimizer":
    import torch

    return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum)


@OPTIMIZERS.register("adam")
def adam(groups: Iterable[dict[str, Any]], params: "FinetuneParams") -> "torch.optim.Optimizer":
    import torch

    return torch.optim.Adam(groups, lr=params.lr)


@OPTIMIZERS.register("adamw")
def adamw(groups: Iterable[dict[str, Any]], params: "FinetuneParams") -> "torch.optim.Optimizer":
    import torch

    return torch.optim.AdamW(groups, lr=params.lr)


@OPTIMIZERS.register("rmsprop")
def rmsprop(groups: Iterable[dict[str, Any]], params: "FinetuneParams") -> "torch.optim.Optimizer":
    import torch

    return torch.optim.RMSprop(groups, lr=params.lr, momentum=params.momentum)


@SCHEDULERS.register("constant")
def constant(optimizer: "torch.optim.Optimizer", warmup_steps: int, total_steps: int) -> Any:
    from transformers import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, warmup_steps)


@SCHEDULERS.register("linear")
def linear(optimizer: "torch.optim.Optimizer", warmup_steps: int, total_steps: int) -> Any:
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)


@SCHEDULERS.register("cosine")
def cosine(optimizer: "torch.optim.Optimizer", warmup_steps: int, total_steps: int) -> Any:
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


def parameter_groups(model: "torch.nn.Module", weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: biases and norm weights get no weight decay
    (decaying them towards zero only hurts), everything else gets ``weight_decay``."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if name.endswith(NO_DECAY_SUFFIXES) else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: "torch.nn.Module", params: "FinetuneParams") -> "torch.optim.Optimizer":
    """The optimizer named by ``finetune.optimizer`` over the model's trainable parameters."""
    groups = [group for group in parameter_groups(model, params.weight_decay) if group["params"]]
    if not groups:
        raise ValueError("no trainable parameters: freeze.depth/patterns froze the head too; loosen them.")
    return OPTIMIZERS.get(params.optimizer)(groups, params)


def build_scheduler(optimizer: "torch.optim.Optimizer", params: "FinetuneParams", total_steps: int) -> Any:
    """The schedule named by ``finetune.scheduler``, warming up over ``warmup_ratio`` of the steps."""
    warmup_steps = int(round(params.warmup_ratio * total_steps))
    return SCHEDULERS.get(params.scheduler)(optimizer, warmup_steps, total_steps)
