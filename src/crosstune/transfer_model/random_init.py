"""The no-transfer alternative: the attached model's architecture and head from random initialisation.

The negative-transfer guard (scratch stage, :mod:`crosstune.pipeline.scratch`) trains it with the same
data, params and budget as fine-tuning, so ``transfer_gain`` measures what the pretrained weights brought.
"""

from __future__ import annotations

from typing import Any

import torch

from crosstune.config import to_dict
from crosstune.modalities import modality_of_config
from crosstune.transfer_model.settings import NO_FREEZE, saved_head


def random_init_model(attached: Any, config: dict[str, Any], seed: int) -> Any:
    """The ``attached`` model's architecture and head (as attached, before training), with a randomly
    initialised (seeded) backbone and nothing frozen: the no-transfer alternative. ``config`` is the
    attached model's ``config.json``."""
    from crosstune.transfer_model.modules import build_transfer_model

    torch.manual_seed(seed)
    backbone = modality_of_config(config).rebuild_backbone(config)
    head = saved_head(config)
    model = build_transfer_model(backbone, task=config["task"], labels=config["labels"], head_type=head.type,
                                 pooling=head.pooling, dropout=head.dropout, hidden_dim=head.hidden_dim, seed=seed)
    model.head.load_state_dict(attached.head.state_dict())
    model.spec = dict(attached.spec, freeze=to_dict(NO_FREEZE))
    return model
