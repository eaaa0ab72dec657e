"""Optimizers, parameter groups and learning-rate schedules by name (torch and transformers do the maths).

Parameter groups carry the transfer-aware rates: the head at ``finetune.head_lr``, and with
``finetune.layer_decay`` < 1 each block below the top at a geometrically smaller rate (discriminative
fine-tuning, Howard and Ruder 2018; layer-wise decay, Clark et al. 2020), embeddings/stem smallest.
Factories import torch lazily so that validating ``params.yaml`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from crosstune.registry import Registry

if TYPE_CHECKING:
    import torch

    from crosstune.config import FinetuneParams

OptimizerFactory = Callable[[Iterable[dict[str, Any]], "FinetuneParams"], "torch.optim.Optimizer"]
SchedulerFactory = Callable[["torch.optim.Optimizer", int, int, "FinetuneParams"],
                            "torch.optim.lr_scheduler.LRScheduler"]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
SCHEDULERS: Registry[SchedulerFactory] = Registry("scheduler")

NO_DECAY_SUFFIXES = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def _fusable(groups: list[dict[str, Any]]) -> bool | None:
    """True when every parameter is a floating-point tensor on a CPU or a GPU: the fused Adam(W) kernel then
    updates all of them in one pass. On 2 CPU cores it took an AdamW step over MiniLM-L6 (22.7M parameters)
    from 32 ms (foreach) to 6 ms (bench/speed/kernels.json). None leaves the choice to torch."""
    parameters = [parameter for group in groups for parameter in group["params"]]
    fusable = all(parameter.is_floating_point() and parameter.device.type in ("cpu", "cuda")
                  for parameter in parameters)
    return True if parameters and fusable else None


@OPTIMIZERS.register("sgd")
def sgd(groups: Iterable[dict[str, Any]], params: "FinetuneParams") -> "torch.optim.Optimizer":
    import torch

    return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum)


@OPTIMIZERS.register("adam")
def adam(groups: Iterable[dict[str, Any]], params: "FinetuneParams") -> "torch.optim.Optimizer":
    import torch

    groups = list(groups)
    return torch.optim.Adam(groups, lr=params.lr, fused=_fusable(groups))


@OPTIMIZERS.register("adamw")
def adamw(groups: Iterable[dict[str, Any]], params: "FinetuneParams") -> "torch.optim.Optimizer":
    import torch

    groups = list(groups)
    return torch.optim.AdamW(groups, lr=params.lr, fused=_fusable(groups))


@OPTIMIZERS.register("rmsprop")
def rmsprop(groups: Iterable[dict[str, Any]], params: "FinetuneParams") -> "torch.optim.Optimizer":
    import torch

    return torch.optim.RMSprop(groups, lr=params.lr, momentum=params.momentum)


@SCHEDULERS.register("constant")
def constant(optimizer: "torch.optim.Optimizer", warmup_steps: int, total_steps: int, params: Any = None) -> Any:
    from transformers import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, warmup_steps)


@SCHEDULERS.register("linear")
def linear(optimizer: "torch.optim.Optimizer", warmup_steps: int, total_steps: int, params: Any = None) -> Any:
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)


@SCHEDULERS.register("cosine")
def cosine(optimizer: "torch.optim.Optimizer", warmup_steps: int, total_steps: int, params: Any = None) -> Any:
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


@SCHEDULERS.register("slanted_triangular")
def slanted_triangular(optimizer: "torch.optim.Optimizer", warmup_steps: int, total_steps: int,
                       params: Any = None) -> Any:
    """ULMFiT's slanted triangular rates (Howard and Ruder 2018, eq. 3): a short linear rise over the
    first ``warmup_ratio`` of the steps, then a long linear decay, from and to ``lr / stlr_ratio``."""
    from torch.optim.lr_scheduler import LambdaLR

    ratio = float(params.stlr_ratio) if params is not None else 32.0
    return LambdaLR(optimizer, lambda step: stlr_factor(step, warmup_steps, total_steps, ratio))


def stlr_factor(step: int, cut: int, total: int, ratio: float) -> float:
    """The multiplier of the peak rate at ``step``: (1 + p (ratio - 1)) / ratio."""
    if cut > 0 and step < cut:
        progress = step / cut
    else:
        progress = max(0.0, 1.0 - (step - cut) / max(total - cut, 1))
    return (1.0 + progress * (ratio - 1.0)) / ratio


def parameter_groups(model: "torch.nn.Module", params: "FinetuneParams", trainable: Any = None) -> list[dict[str, Any]]:
    """Groups of trainable parameters, each with its own rate and weight decay.

    Biases and norm weights get no weight decay (decaying them towards zero only hurts); with L2-SP on,
    backbone weights get none either (L2-SP pulls them towards their pretrained values instead).
    ``trainable``: the parameters to include (default: those with ``requires_grad``), so gradual
    unfreezing can put parameters that are still frozen into the optimizer from the start.
    """
    head_lr = params.head_lr or params.lr
    has_layers = hasattr(model, "parameter_layers")
    depth, top = model.parameter_layers() if has_layers else ({}, 0)
    head_ids = {id(p) for p in model.head.parameters()} if has_layers else set()
    wanted = trainable if trainable is not None else {id(p) for p in model.parameters() if p.requires_grad}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if id(parameter) not in wanted:
            continue
        layer = depth.get(id(parameter), top)
        in_head = id(parameter) in head_ids
        no_decay = name.endswith(NO_DECAY_SUFFIXES) or (params.l2sp > 0 and not in_head)
        lr = head_lr if in_head else params.lr * params.layer_decay ** max(top - 1 - layer, 0)
        group = groups.setdefault((layer, no_decay), {"params": [], "lr": lr, "initial_lr": lr,
                                                      "weight_decay": 0.0 if no_decay else params.weight_decay,
                                                      "layer": layer})
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: "torch.nn.Module", params: "FinetuneParams", trainable: Any = None) -> "torch.optim.Optimizer":
    """The optimizer named by ``finetune.optimizer`` over the model's trainable parameters."""
    groups = parameter_groups(model, params, trainable)
    if not groups:
        raise ValueError("no trainable parameters: freeze.depth/patterns froze the head too; loosen them.")
    return OPTIMIZERS.get(params.optimizer, "finetune.optimizer")(groups, params)


def build_scheduler(optimizer: "torch.optim.Optimizer", params: "FinetuneParams", total_steps: int) -> Any:
    """The schedule named by ``finetune.scheduler``, warming up over ``warmup_ratio`` of the steps."""
    warmup_steps = int(round(params.warmup_ratio * total_steps))
    return SCHEDULERS.get(params.scheduler, "finetune.scheduler")(optimizer, warmup_steps, total_steps, params)


def check_names(params: "FinetuneParams") -> None:
    """``finetune.optimizer`` and ``finetune.scheduler`` name registered entries: checked before a stage loads a
    model, so a typo costs no work."""
    OPTIMIZERS.check(params.optimizer, "finetune.optimizer")
    SCHEDULERS.check(params.scheduler, "finetune.scheduler")
