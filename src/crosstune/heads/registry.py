"""Task heads and pooling: how backbone token states become one prediction per text.

A head is its own ``nn.Module`` (:mod:`crosstune.heads.modules`) so it can be swapped, saved and tested
apart from the backbone. The registries import no torch, so validating ``params.yaml`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from crosstune.errors import ConfigError
from crosstune.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from crosstune.config import HeadParams

Pooling = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
HeadFactory = Callable[..., "nn.Module"]

POOLINGS: Registry[Pooling] = Registry("pooling")
HEADS: Registry[HeadFactory] = Registry("head")

HF_HEAD = "hf"  # the stock Hugging Face classification model (crosstune.heads.hf)
HF_POOLING = "cls"  # what it classifies from: the first token's state


@POOLINGS.register("cls")
def cls_pooling(hidden_states: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """The first token's state, as BERT's classification recipe uses.

    Shape:
        hidden_states (B, T, H), attention_mask (B, T) -> (B, H)
    """
    return hidden_states[:, 0]


TOKEN_POOLING = "tokens"  # no pooling: what a per-token task's head reads (Task.pooling); not a user's choice


def token_states(hidden_states: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Every token's state, unpooled: a per-token task's head predicts one output per token.

    Shape:
        hidden_states (B, T, H), attention_mask (B, T) -> (B, T, H)
    """
    return hidden_states


def pooling_function(name: str) -> Pooling:
    """The pooling a saved model names: a registered one (``head.pooling``), or the per-token tasks' none."""
    return token_states if name == TOKEN_POOLING else POOLINGS.get(name, "head.pooling")


@POOLINGS.register("mean")
def mean_pooling(hidden_states: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Average of the non-padding token states, the pooling sentence-transformers train with.

    Shape:
        hidden_states (B, T, H), attention_mask (B, T) -> (B, H)
    """
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@HEADS.register("linear")
def linear_head(feature_dim: int, num_outputs: int, dropout: float = 0.1, hidden_dim: int = 0,
                backbone: "nn.Module | None" = None, task: str = "classification") -> "nn.Module":
    """Dropout then one linear layer: the standard fine-tuning head."""
    from crosstune.heads.modules import LinearHead

    return LinearHead(feature_dim, num_outputs, dropout, hidden_dim)


@HEADS.register("mlp")
def mlp_head(feature_dim: int, num_outputs: int, dropout: float = 0.1, hidden_dim: int = 256,
             backbone: "nn.Module | None" = None, task: str = "classification") -> "nn.Module":
    """Two layers with a GELU between: more capacity when the backbone stays frozen."""
    from crosstune.heads.modules import MLPHead

    return MLPHead(feature_dim, num_outputs, dropout, hidden_dim)


@HEADS.register(HF_HEAD)
def hf_head(feature_dim: int, num_outputs: int, dropout: float = 0.1, hidden_dim: int = 0,
            backbone: "nn.Module | None" = None, task: str = "classification") -> "nn.Module":
    """The head of the stock Hugging Face model of the task's auto class (``AutoModelForSequenceClassification``
    for classification and regression; for BERT: pooler, dropout, linear classifier on the [CLS] state) for the
    backbone's architecture, saved so ``transformers.pipeline`` loads it."""
    from crosstune.heads.hf import build_hf_head

    return build_hf_head(backbone, feature_dim, num_outputs, dropout, task)


def build_head(name: str, feature_dim: int, num_outputs: int, dropout: float, hidden_dim: int,
               backbone: "nn.Module | None" = None, task: str = "classification") -> "nn.Module":
    """Instantiate the registered head ``name``; ``backbone`` (what it goes on) and ``task`` (what it predicts)
    matter to the hf head only."""
    return HEADS.get(name, "head.type")(feature_dim, num_outputs, dropout=dropout, hidden_dim=hidden_dim,
                                        backbone=backbone, task=task)


def check_head_params(head: "HeadParams") -> None:
    """``head.type`` and ``head.pooling`` must be registered, and the hf head classifies from the first token."""
    HEADS.check(head.type, "head.type")
    POOLINGS.check(head.pooling, "head.pooling")
    if head.type == HF_HEAD and head.pooling != HF_POOLING:
        raise ConfigError(f"params.yaml: head.pooling: {head.pooling!r} does not apply to head.type: {HF_HEAD}, which "
                          f"classifies from the first token's state as the stock Hugging Face model does; set "
                          f"head.pooling: {HF_POOLING}, or keep {head.pooling} with head.type: linear or mlp.")
