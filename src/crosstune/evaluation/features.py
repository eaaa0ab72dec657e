"""Pooled features of a model (what its head sees), extracted once per split and kept for reuse.

Evaluate reads the pretrained model's train/source/test features for both the linear probe and the
domain gap; :class:`PooledFeatures` makes that one pass per split instead of two.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crosstune.data.batching import Batching, Split


@torch.inference_mode()
def pooled_features(model: Any, split: Split, batching: Batching, device: str) -> np.ndarray:
    """The backbone's pooled features (what the head sees) for every row of ``split``, in order.

    Shape:
        -> (N, feature_dim) float32
    """
    model.eval()
    features = np.zeros((len(split), model.feature_dim), dtype=np.float32)
    for batch in batching.evaluate(split):
        batch = batch.to(device)
        features[batch.indices.numpy()] = model.features(**batch.inputs).float().cpu().numpy()
    return features


class PooledFeatures:
    """Pooled features of one model, extracted once per split: the linear probe and the domain gap read
    the same pretrained train/source features, and a second pass over them would double evaluate's cost."""

    def __init__(self, model: Any, batching: Batching, device: str) -> None:
        self.model, self.batching, self.device = model, batching, device
        self._features: dict[str, np.ndarray] = {}

    def __call__(self, name: str, split: Split) -> np.ndarray:
        """Features of ``split`` (cached under ``name``)."""
        if name not in self._features:
            self._features[name] = pooled_features(self.model, split, self.batching, self.device)
        return self._features[name]
