"""The head modules behind the ``head.type`` registry of :mod:`crosstune.heads.registry`."""

from __future__ import annotations

import torch
from torch import nn


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
