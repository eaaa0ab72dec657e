"""Task heads and pooling: how backbone token states become one prediction per text.

A head is its own ``nn.Module`` so it can be swapped, saved and tested apart from the backbone.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from crosstune.registry import Registry

Pooling = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

POOLINGS: Registry[Pooling] = Registry("pooling")
HEADS: Registry[type[nn.Module]] = Registry("head")


@POOLINGS.register("cls")
def cls_pooling(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's state, as BERT's classification recipe uses.

    Shape:
        hidden_states (B, T, H), attention_mask (B, T) -> (B, H)
    """
    return hidden_states[:, 0]


@POOLINGS.register("mean")
def mean_pooling(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the non-padding token states, the pooling sentence-transformers train with.

    Shape:
        hidden_states (B, T, H), attention_mask (B, T) -> (B, H)
    """
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Dropout then one linear layer: the standard fine-tuning head.

    Shape:
        features (B, feature_dim) -> (B, num_outputs)
    """

    def __init__(self, feature_dim: int, num_outputs: int, dropout: float = 0.1, hidden_dim: int = 0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """Two layers with a GELU between: more capacity when the backbone stays frozen.

    Shape:
        features (B, feature_dim) -> (B, num_outputs)
    """

    def __init__(self, feature_dim: int, num_outputs: int, dropout: float = 0.1, hidden_dim: int = 256) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(feature_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_outputs),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def build_head(name: str, feature_dim: int, num_outputs: int, dropout: float, hidden_dim: int) -> nn.Module:
    """Instantiate the registered head ``name``."""
    return HEADS.get(name)(feature_dim, num_outputs, dropout=dropout, hidden_dim=hidden_dim)
