"""Gradual unfreezing (ULMFiT, Howard and Ruder 2018, https://arxiv.org/abs/1801.06146).

Training starts with only the new head trainable; every ``finetune.unfreeze_every`` optimizer steps (or
at each epoch when 0) the next block from the top joins, down to the lowest block the freeze policy
leaves trainable, then the embeddings/stem if the policy trains them. A block that is never unlocked
by the policy (``freeze.depth``, ``freeze.patterns``) is never touched.
"""

from __future__ import annotations

import logging

from torch import nn

from crosstune.freezing.policy import set_train_mode

logger = logging.getLogger(__name__)


class GradualUnfreezing:
    """Unlocks units (head, top block, ..., bottom block, stem) one at a time as steps pass.

    Args:
        model: a :class:`~crosstune.transfer_model.modules.TransferModel` with its freeze policy applied.
        every: optimizer steps between unlocks (> 0).
    """

    def __init__(self, model: nn.Module, every: int) -> None:
        if every < 1:
            raise ValueError("unfreeze interval must be at least one step")
        self.model = model
        self.every = every
        layers, top = model.parameter_layers()
        # Head first, then the blocks from the top down, the stem last. Only what the policy trains takes
        # part; a layer with nothing trainable is skipped.
        trainable = [p for p in model.parameters() if p.requires_grad]
        units = [[p for p in trainable if layers[id(p)] == layer] for layer in range(top, -1, -1)]
        self.units = [unit for unit in units if unit]
        self.trainable = {id(p) for unit in self.units for p in unit}  # the optimizer's parameters
        self.unlocked = -1

    @property
    def num_stages(self) -> int:
        return len(self.units)

    def stage_at(self, step: int) -> int:
        """Units unlocked after ``step`` optimizer steps, minus one (0 = the head alone)."""
        return min(self.num_stages - 1, step // self.every)

    def apply(self, step: int) -> bool:
        """Set ``requires_grad`` for ``step``; returns whether anything changed."""
        stage = self.stage_at(step)
        if stage == self.unlocked:
            return False
        for index, unit in enumerate(self.units):
            for parameter in unit:
                parameter.requires_grad_(index <= stage)
        self.unlocked = stage
        set_train_mode(self.model)  # newly unlocked blocks get their dropout back
        logger.info("gradual unfreezing: step %d, %d of %d units trainable", step, stage + 1, self.num_stages)
        return True

    def release(self) -> None:
        """Leave every unit the policy trains trainable (after training)."""
        for unit in self.units:
            for parameter in unit:
                parameter.requires_grad_(True)
