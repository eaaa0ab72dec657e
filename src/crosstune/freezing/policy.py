"""Freeze policies: which backbone parameters keep their pretrained values.

``freeze.depth`` N freezes the embeddings and the bottom N transformer blocks (``all``: the whole
backbone); ``freeze.patterns`` freezes further parameters by name (fnmatch). The head always trains.
Fully frozen modules are put in eval mode while training (:func:`set_train_mode`): a frozen block is a
fixed feature extractor, so its dropout and its BatchNorm running statistics must not change it.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence, Union

from torch import nn

from crosstune.errors import ConfigError

if TYPE_CHECKING:
    from crosstune.config import FreezeParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreezeReport:
    """Parameter counts after freezing, saved to ``metrics/freeze.json``."""

    depth: Union[int, str]
    num_blocks: int
    frozen_blocks: int
    trainable_parameters: int
    frozen_parameters: int
    total_parameters: int
    trainable_fraction: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def apply_freeze(model: nn.Module, depth: Union[int, str], patterns: Sequence[str] = (),
                 train_batchnorm: bool = False) -> FreezeReport:
    """Set ``requires_grad`` on ``model`` (a :class:`~crosstune.transfer_model.modules.TransferModel`) by policy.

    ``train_batchnorm`` keeps the BatchNorm layers of frozen blocks trainable (their statistics then
    update too); by default they are frozen with their block and stay in eval mode.

    Raises:
        ConfigError: depth larger than the number of blocks, or a pattern that matches nothing.
    """
    blocks = model.block_modules()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if depth == "all":
        frozen_blocks = len(blocks)
        frozen_modules: list[nn.Module] = [model.backbone]
    else:
        if depth > len(blocks):
            raise ConfigError(
                f"params.yaml: freeze.depth: {depth} but this backbone has {len(blocks)} blocks; "
                f"use 0..{len(blocks)} or 'all'."
            )
        frozen_blocks = int(depth)
        frozen_modules = (model.stem_modules() if depth > 0 else []) + [m for block in blocks[:depth] for m in block]
    for module in frozen_modules:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    named = dict(model.named_parameters())
    for pattern in patterns:
        matches = [name for name in named if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise ConfigError(
                f"params.yaml: freeze.patterns: {pattern!r} matches no parameter; names look like "
                f"{list(named)[:3]} (see metrics/freeze.json for the layout)."
            )
        for name in matches:
            named[name].requires_grad_(False)
    if train_batchnorm:
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for parameter in module.parameters():
                    parameter.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    report = FreezeReport(depth, len(blocks), frozen_blocks, trainable, total - trainable, total,
                          round(trainable / total, 6))
    logger.info("freeze depth=%s patterns=%s: %d trainable / %d frozen parameters",
                depth, list(patterns), trainable, total - trainable)
    return report


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except modules whose parameters are all frozen stay in eval mode."""
    model.train()
    for module in model.modules():
        parameters = list(module.parameters())
        if parameters and not any(parameter.requires_grad for parameter in parameters):
            module.eval()


def apply_policy(model: nn.Module, policy: "FreezeParams", seed: int) -> FreezeReport:
    """Apply a whole typed freeze policy: depth, patterns and BatchNorm (:func:`apply_freeze`), then the
    seeded LoRA adapters when ``policy.lora_r`` > 0 (:func:`crosstune.freezing.lora.apply_lora`). The same
    call in attach_head (to count) and in finetune (to train), from the same saved settings."""
    report = apply_freeze(model, policy.depth, policy.patterns, policy.train_batchnorm)
    if policy.lora_r:
        from crosstune.freezing.lora import apply_lora

        apply_lora(model, policy.lora_r, policy.lora_alpha, policy.lora_dropout, policy.lora_targets, seed)
    return report
