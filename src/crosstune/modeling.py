"""The model crosstune trains: a pretrained encoder, a pooling rule and a new task head.

Saved as a Hugging Face-style directory: ``config.json`` (everything needed to rebuild the
modules: backbone config, head, pooling, labels, freeze policy), ``model.safetensors`` and the
tokenizer files. Loading never unpickles code: the modules are rebuilt from the JSON config and
the tensors come from safetensors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crosstune.backbones import drop_unused_pooler
from crosstune.heads import POOLINGS, build_head
from crosstune.io import read_json, write_json

logger = logging.getLogger(__name__)

MODEL_TYPE = "crosstune-text"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class TransferModel(nn.Module):
    """Backbone -> pooling -> head.

    Args:
        backbone: a Hugging Face encoder returning ``last_hidden_state``.
        head: maps pooled features to ``num_outputs`` (classes, or 1 for regression).
        spec: the JSON-able description saved in ``config.json`` (task, labels, head, pooling, freeze).

    Shape:
        input_ids (B, T), attention_mask (B, T) -> (B, num_outputs)
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = dict(spec)
        self.pool = POOLINGS.get(spec["pooling"])

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features the head receives."""
        return int(self.backbone.config.hidden_size)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features. Shape: (B, T), (B, T) -> (B, feature_dim)."""
        hidden_states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(hidden_states, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


def build_transfer_model(
    backbone: nn.Module, *, task: str, labels: list[str], head_type: str, pooling: str,
    dropout: float, hidden_dim: int, seed: int,
) -> TransferModel:
    """Put a freshly initialised head (seeded) on ``backbone``."""
    backbone = drop_unused_pooler(backbone)
    num_outputs = len(labels) if task == "classification" else 1
    torch.manual_seed(seed)
    head = build_head(head_type, int(backbone.config.hidden_size), num_outputs, dropout, hidden_dim)
    spec = {
        "task": task, "labels": list(labels), "pooling": pooling,
        "head": {"type": head_type, "dropout": dropout, "hidden_dim": hidden_dim, "num_outputs": num_outputs},
    }
    return TransferModel(backbone, head, spec)


def save_transfer_model(model: TransferModel, directory: str | Path, tokenizer: Any = None,
                        extra: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer) into ``directory``."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": MODEL_TYPE,
        **model.spec,
        # _name_or_path is where the backbone was loaded from on this machine: not part of the model.
        "backbone_config": {key: value for key, value in model.backbone.config.to_dict().items()
                            if key != "_name_or_path"},
        **(extra or {}),
    }
    write_json(directory / CONFIG_NAME, config)
    save_model(model, str(directory / WEIGHTS_NAME))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def load_transfer_model(directory: str | Path) -> tuple[TransferModel, dict[str, Any]]:
    """Rebuild a :class:`TransferModel` from its directory; returns the model and its config.

    The freeze policy in the config is *not* applied here: callers that train re-apply it
    (see :func:`crosstune.freezing.apply_freeze`).
    """
    from safetensors.torch import load_model
    from transformers import AutoModel

    directory = Path(directory)
    config = read_json(directory / CONFIG_NAME)
    if config.get("model_type") != MODEL_TYPE:
        raise ValueError(
            f"{directory / CONFIG_NAME}: model_type is {config.get('model_type')!r}, not {MODEL_TYPE!r}; "
            f"this is not a crosstune model directory (run the attach-head or finetune stage to make one)."
        )
    backbone = AutoModel.from_config(_backbone_config(config))
    head_spec = config["head"]
    model = build_transfer_model(
        backbone, task=config["task"], labels=config["labels"], head_type=head_spec["type"],
        pooling=config["pooling"], dropout=head_spec["dropout"], hidden_dim=head_spec["hidden_dim"], seed=0,
    )
    model.spec = {key: config[key] for key in ("task", "labels", "pooling", "head") if key in config}
    if "freeze" in config:
        model.spec["freeze"] = config["freeze"]
    load_model(model, str(directory / WEIGHTS_NAME), strict=True)
    model.eval()
    return model, config


def _backbone_config(config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    backbone_config = dict(config["backbone_config"])
    return AutoConfig.for_model(backbone_config.pop("model_type"), **backbone_config)


def load_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved beside the model (told the backbone's config, not crosstune's)."""
    from transformers import AutoTokenizer

    config = read_json(Path(directory) / CONFIG_NAME)
    return AutoTokenizer.from_pretrained(str(directory), config=_backbone_config(config))
