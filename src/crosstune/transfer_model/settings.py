"""What a saved model directory says, read back as typed settings (torch-free): its ``config.json`` and the
records the stages leave beside it.

The freeze policy and head settings are written from the typed params of the stage that made the model
(attach_head), so later stages read them from here instead of re-supplying defaults of their own; the
cache stage decides without torch from the same reading.

A ``head.type: hf`` model's ``config.json`` is a Hugging Face config with crosstune's fields under
:data:`HF_SECTION`; every reader here takes either form (:func:`model_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crosstune.config import FreezeParams, HeadParams, from_mapping

GUARD_RECORD = "guard.json"  # in models/scratch: how the scratch model was made, or that the guard was off
PROBE_RECORD = "probe.json"  # in models/probe: how its output layer was fitted
NO_FREEZE = FreezeParams(depth=0, patterns=(), lora_r=0)  # what a model trained from scratch has
HF_SECTION = "crosstune"  # where a Hugging Face-form config.json keeps crosstune's fields


def is_hf_form(config: dict[str, Any]) -> bool:
    """Whether ``config`` (a model's config.json as read) is the Hugging Face form (``head.type: hf``)."""
    return HF_SECTION in config


def model_settings(config: dict[str, Any]) -> dict[str, Any]:
    """crosstune's fields of a model's config.json at the top level, whichever form it was saved in.

    The Hugging Face form's own fields (model_type ``bert``, id2label...) become its ``backbone_config``,
    as the crosstune form keeps the backbone's; a crosstune-form config comes back as it is.
    """
    if not is_hf_form(config):
        return config
    return {**config[HF_SECTION], "backbone_config": {key: value for key, value in config.items()
                                                      if key != HF_SECTION}}


def saved_freeze(config: dict[str, Any]) -> FreezeParams:
    """The freeze policy recorded in a model's config (everything trains when it records none)."""
    return from_mapping(FreezeParams, model_settings(config).get("freeze", {}), "freeze")


def saved_head(config: dict[str, Any]) -> HeadParams:
    """The head settings (type, dropout, hidden size, pooling) recorded in a model's config; the pooling only
    where it was a choice (a staged backbone records its own fixed pooling, which is no ``head.pooling``)."""
    from crosstune.heads.registry import POOLINGS

    config = model_settings(config)
    head = config["head"]
    values = {key: head[key] for key in ("type", "dropout", "hidden_dim") if key in head}
    if config.get("pooling") in POOLINGS:
        values["pooling"] = config["pooling"]
    return from_mapping(HeadParams, values, "head")


def saved_max_length(config: dict[str, Any], directory: str | Path) -> int:
    """Tokens per input the model was trained with (written by the finetune and scratch stages; 0 for a
    modality without tokens)."""
    from crosstune.modalities import modality_of_config

    config = model_settings(config)
    return modality_of_config(config).saved_max_length(config, directory)
