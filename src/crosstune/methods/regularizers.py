"""Regularisers towards what the pretrained model knew: modules returning a scalar added to the task loss.

Each takes the model and the batch's pooled features and returns an unweighted penalty; the training
loop multiplies it by its weight in ``params.yaml`` (``finetune.l2sp``, ``finetune.bss``). Plain L2
(weight decay) lives in the optimizer; head dropout in the head; label smoothing in the loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from crosstune.registry import Registry

if TYPE_CHECKING:
    from crosstune.config import FinetuneParams
    from crosstune.transfer_model.modules import TransferModel


class L2SP(nn.Module):
    """L2-SP (Li, Grandvalet and Davoine, ICML 2018, https://arxiv.org/abs/1802.01483).

    Omega(w) = ||w_S - w_S^0||^2 over the backbone's trainable parameters w_S, with w_S^0 the pretrained
    (starting) values: decay towards the starting point, not towards zero, so fine-tuning keeps what
    the backbone knew unless the target data pays for moving. The new head has no starting point; it
    keeps ordinary weight decay.
    """

    def __init__(self, model: "TransferModel") -> None:
        super().__init__()
        self.names = [name for name, parameter in model.backbone.named_parameters() if parameter.requires_grad]
        # A snapshot, not a parameter: never trained, never saved with the model.
        self.reference = {name: parameter.detach().clone()
                          for name, parameter in model.backbone.named_parameters() if parameter.requires_grad}

    def forward(self, model: "TransferModel", features: torch.Tensor) -> torch.Tensor:
        parameters = dict(model.backbone.named_parameters())
        total = features.new_zeros(())
        for name in self.names:
            parameter = parameters[name]
            if parameter.requires_grad:
                total = total + (parameter - self.reference[name].to(parameter.device)).pow(2).sum()
        return total


class BatchSpectralShrinkage(nn.Module):
    """BSS (Chen, Wang, Fu, Long and Wang, NeurIPS 2019, "Catastrophic forgetting meets negative transfer").

    L_bss(F) = sum_{i=1..k} sigma_{-i}^2, the k smallest squared singular values of the batch's (B, D)
    feature matrix F. Small singular directions carry the features that do not transfer and that
    fine-tuning on little data overfits to; shrinking them counters negative transfer.
    """

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k

    def forward(self, model: "TransferModel", features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2:
            from crosstune.errors import ConfigError

            raise ConfigError("params.yaml: finetune.bss shrinks a batch's (examples x features) matrix, and a "
                              "per-token task's features are one row per token of every example; set finetune.bss: 0.")
        singular_values = torch.linalg.svdvals(features.float())  # descending
        return singular_values[-self.k:].pow(2).sum()


RegularizerFactory = Callable[["TransferModel", "FinetuneParams"], nn.Module]
REGULARIZERS: Registry[RegularizerFactory] = Registry("regularizer")
REGULARIZERS.register("l2sp")(lambda model, params: L2SP(model))
REGULARIZERS.register("bss")(lambda model, params: BatchSpectralShrinkage(params.bss_k))


def build_regularizers(model: "TransferModel", params: "FinetuneParams") -> list[tuple[str, float, nn.Module]]:
    """(name, weight, module) for every regulariser with a weight > 0 in ``params``."""
    return [(name, float(getattr(params, name)), REGULARIZERS.get(name)(model, params))
            for name in REGULARIZERS.names() if getattr(params, name) > 0]
