"""What a saved model directory's ``config.json`` says, read back as typed settings (torch-free).

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
from crosstune.errors import ArtifactError

GUARD_RECORD = "guard.json"  # in models/scratch: how the scratch model was made, or that the guard was off
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
    """The head settings (type, dropout, hidden size, pooling) recorded in a model's config."""
    config = model_settings(config)
    head = config["head"]
    values = {key: head[key] for key in ("type", "dropout", "hidden_dim") if key in head}
    if config.get("modality", "text") == "text" and "pooling" in config:
        values["pooling"] = config["pooling"]
    return from_mapping(HeadParams, values, "head")


def saved_max_length(config: dict[str, Any], directory: str | Path) -> int:
    """Tokens per text the model was trained with (written by the finetune and scratch stages)."""
    config = model_settings(config)
    if config.get("modality") in ("image", "audio"):
        return 0  # no tokens
    if "max_length" not in config:
        raise ArtifactError(f"{Path(directory) / 'config.json'}: has no max_length, so it is not a trained model "
                            f"(finetune and scratch write one); point at models/finetuned or rerun `dvc repro`.")
    return int(config["max_length"])
