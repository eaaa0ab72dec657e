"""The interface image and audio backbones share: a body cut into a stem and blocks, run stage by stage.

``forward_features`` gives pooled features (B, feature_dim); ``stem`` and ``blocks`` are the units that
``freeze.depth`` counts (stem + the first N blocks); ``forward_stages`` runs any contiguous range of them
(the frozen-prefix cache runs the bottom ones once, training runs the rest); ``preprocessing`` holds what
the weights expect of their input (image size and normalisation; sample rate, clip and features).
Subclasses say how the last stage's output is pooled.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import nn

Stage = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (body, x) -> x after one stem/block


class StagedBackbone(nn.Module):
    """A body whose forward pass is a list of stage functions: the stem, then one per block.

    Subclasses declare the modality they read (:mod:`crosstune.modalities`) and the name of their pooling
    (recorded in a model's config.json), and say how their saved config.json describes them.
    """

    modality: ClassVar[str] = ""
    pooling_name: ClassVar[str] = ""

    def __init__(self, body: nn.Module, stem: list[str], blocks: list[list[str]], feature_dim: int,
                 preprocessing: Any, stages: list[Stage]) -> None:
        super().__init__()
        if len(stages) != len(blocks) + 1:
            raise ValueError(f"{len(stages)} stage functions for a stem and {len(blocks)} blocks")
        self.body = body
        self.feature_dim = feature_dim
        self.preprocessing = preprocessing
        self._stem_names = stem
        self._block_names = blocks
        self._stages = stages
        self.name = ""  # the registry name, set by the registry's build function

    def _modules_named(self, names: list[str]) -> list[nn.Module]:
        return [self.body.get_submodule(name) for name in names]

    @property
    def stem(self) -> list[nn.Module]:
        """Modules before the first block (frozen with any depth > 0)."""
        return self._modules_named(self._stem_names)

    @property
    def blocks(self) -> list[list[nn.Module]]:
        """The backbone's stages, input side first; each a list of modules."""
        return [self._modules_named(names) for names in self._block_names]

    def forward_stages(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start`` to ``stop - 1`` (0 = the stem, i = block i) on ``x``."""
        for stage in self._stages[start:stop]:
            x = stage(self.body, x)
        return x

    def pool(self, outputs: torch.Tensor) -> torch.Tensor:
        """The last stage's output -> (B, feature_dim)."""
        raise NotImplementedError

    def forward_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_stages(inputs, 0, len(self._stages)))

    def saved_config(self, weights: str) -> dict[str, Any]:
        """What ``config.json`` records to rebuild the architecture (weights come from safetensors)."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_features(inputs)
