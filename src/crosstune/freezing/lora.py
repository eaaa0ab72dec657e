"""LoRA adapters (Hu et al. 2021, https://arxiv.org/abs/2106.09685) through ``peft``, as a freeze policy.

``freeze.lora_r > 0`` freezes the whole backbone (a text encoder, or a recogniser's encoder) and adds trainable
low-rank updates W + (alpha / r) B A to the modules named by ``freeze.lora_targets``; the head (a recogniser's
decoder) trains as usual.
After training the adapters are merged into the weights, so the saved model is an ordinary crosstune
model directory of the same architecture (nothing peft-specific to load).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from crosstune.errors import ConfigError

logger = logging.getLogger(__name__)


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float, targets: Sequence[str], seed: int) -> int:
    """Freeze ``model.backbone`` and inject adapters into it in place; returns the adapter parameter count."""
    from peft import LoraConfig, inject_adapter_in_model

    if not type(model).takes_lora:
        raise ConfigError(f"params.yaml: freeze.lora_r: LoRA adapters are for transformer backbones (text encoders, "
                          f"Whisper's encoder in a transcription task); set freeze.lora_r: 0 for {model.modality} "
                          f"backbones.")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.backbone.named_modules()}
    missing = [target for target in targets if target not in names]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.backbone.named_modules()
                         if isinstance(module, nn.Linear)})
        raise ConfigError(f"params.yaml: freeze.lora_targets: {missing} name no module of this backbone; "
                          f"its linear layers are called {linear}.")
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(seed)  # the adapters' A matrices start random (B at zero): seeded like the head
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, model.backbone)
    count = 0
    for name, parameter in model.backbone.named_parameters():
        is_adapter = "lora_" in name
        parameter.requires_grad_(is_adapter)
        count += parameter.numel() if is_adapter else 0
    logger.info("LoRA r=%d alpha=%s on %s: %d adapter parameters", r, alpha, list(targets), count)
    return count


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base layer and put the plain layer back; returns how many were merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.backbone.get_submodule(parent_name) if parent_name else model.backbone
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())
