"""What a saved model directory's ``config.json`` says, read back as typed settings (torch-free).

The freeze policy and head settings are written from the typed params of the stage that made the model
(attach_head), so later stages read them from here instead of re-supplying defaults of their own; the
cache stage decides without torch from the same reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crosstune.config import FreezeParams, HeadParams, from_mapping
from crosstune.errors import ArtifactError

GUARD_RECORD = "guard.json"  # in models/scratch: how the scratch model was made, or that the guard was off
NO_FREEZE = FreezeParams(depth=0, patterns=(), lora_r=0)  # what a model trained from scratch has


def saved_freeze(config: dict[str, Any]) -> FreezeParams:
    """The freeze policy recorded in a model's config (everything trains when it records none)."""
    return from_mapping(FreezeParams, config.get("freeze", {}), "freeze")


def saved_head(config: dict[str, Any]) -> HeadParams:
    """The head settings (type, dropout, hidden size, pooling) recorded in a model's config."""
    head = config["head"]
    values = {key: head[key] for key in ("type", "dropout", "hidden_dim") if key in head}
    if config.get("modality", "text") == "text" and "pooling" in config:
        values["pooling"] = config["pooling"]
    return from_mapping(HeadParams, values, "head")


def saved_max_length(config: dict[str, Any], directory: str | Path) -> int:
    """Tokens per text the model was trained with (written by the finetune and scratch stages)."""
    if config.get("modality") in ("image", "audio"):
        return 0  # no tokens
    if "max_length" not in config:
        raise ArtifactError(f"{Path(directory) / 'config.json'}: has no max_length, so it is not a trained model "
                            f"(finetune and scratch write one); point at models/finetuned or rerun `dvc repro`.")
    return int(config["max_length"])
