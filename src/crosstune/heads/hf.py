"""``head.type: hf``: the stock Hugging Face sequence-classification model of the backbone's architecture.

What trains is ``AutoModelForSequenceClassification`` for the backbone's config, split where crosstune
splits every model: the encoder stays the model's ``backbone`` (so freezing, the frozen-prefix cache, LoRA
and layer-wise rates treat it as with any head) and :class:`HFSequenceHead` holds the rest of the Hugging
Face model. For BERT (the default MiniLM) that is ``BertForSequenceClassification``'s head: the first
([CLS]) token's state through BERT's pooler (dense + tanh), dropout and a linear classifier. The head runs
the Hugging Face class's own ``forward`` on that one token state, so its arithmetic is the stock model's.

Saved (:func:`crosstune.transfer_model.storage.save_transfer_model`) as a Hugging Face model directory:
``transformers.pipeline("text-classification", model=DIR)`` and
``AutoModelForSequenceClassification.from_pretrained(DIR)`` load it as they load any fine-tuned BERT.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from crosstune.errors import ConfigError
from crosstune.heads.registry import HEADS, HF_HEAD

logger = logging.getLogger(__name__)

# Architectures whose sequence-classification model reads the first token's state (checked against the
# whole Hugging Face model in tests/test_hf_head.py), and the config key its classification dropout
# reads: where head.dropout goes. Last-token classifiers (GPT-2, Llama) and ALBERT (its pooler sits
# outside a module of its own) are not here.
DROPOUT_KEYS = {
    "bert": "classifier_dropout",
    "roberta": "classifier_dropout",
    "xlm-roberta": "classifier_dropout",
    "electra": "classifier_dropout",
    "distilbert": "seq_classif_dropout",
    "deberta-v2": "cls_dropout",
}


class EncoderOutput(nn.Module):
    """Stands in for the Hugging Face model's encoder: returns the token states it is given (as
    ``inputs_embeds``) and, where the architecture classifies from it, the encoder's pooler on them.

    Shape:
        inputs_embeds (B, T, H) -> last_hidden_state (B, T, H), pooler_output (B, H) or None
    """

    def __init__(self, pooler: nn.Module | None) -> None:
        super().__init__()
        self.pooler = pooler

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pooled = None if self.pooler is None else self.pooler(inputs_embeds)
        return BaseModelOutputWithPooling(last_hidden_state=inputs_embeds, pooler_output=pooled)


class HFSequenceHead(nn.Module):
    """A Hugging Face ``...ForSequenceClassification`` model with its encoder replaced by
    :class:`EncoderOutput`: the classification part of the stock model, on the first token's state.

    Its ``model.state_dict()`` keys are the Hugging Face model's own (``bert.pooler.dense.weight``,
    ``classifier.weight``); the encoder's are the backbone's, under ``model.base_model_prefix``.

    Shape:
        features (B, H) (the first token's final state) -> (B, num_outputs)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def base_model_prefix(self) -> str:
        """Where the Hugging Face model keeps its encoder (``bert``): the backbone's key prefix when saved."""
        return str(self.model.base_model_prefix)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Shape: (B, H) -> (B, num_outputs); a per-token task's (B, T, H) -> (B, T, num_outputs)."""
        return self.model(inputs_embeds=features if features.dim() == 3 else features.unsqueeze(1)).logits


def hf_config(backbone_config: Any, num_outputs: int, dropout: float, labels: list[str] | None = None,
              task: str = "classification") -> Any:
    """The Hugging Face config of the stock model: the backbone's config, the task's fields (its label maps from
    crosstune's labels and problem type, :meth:`crosstune.tasks.base.Task.hf_config`) and the classification
    dropout (``head.dropout``)."""
    from crosstune.tasks.registry import TASKS

    config = copy.deepcopy(backbone_config)
    config.num_labels = num_outputs
    TASKS.get(task).hf_config(config, labels or [])
    setattr(config, DROPOUT_KEYS[config.model_type], dropout)
    return config


def check_hf_backbone(backbone: nn.Module) -> None:
    """A :class:`~crosstune.errors.ConfigError` unless ``backbone`` is a text encoder of :data:`DROPOUT_KEYS`."""
    from crosstune.backbones.staged import StagedBackbone

    others = [name for name in HEADS.names() if name != HF_HEAD]
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if isinstance(backbone, StagedBackbone) or model_type is None:
        raise ConfigError(
            f"params.yaml: head.type: {HF_HEAD!r} is the stock Hugging Face text-classification model and needs a "
            f"Hugging Face text backbone; this backbone is {type(backbone).__name__} (an image or audio one). "
            f"Set head.type to one of {others}."
        )
    if model_type in DROPOUT_KEYS:
        return
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    why = (f"the hf head does not run its {MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[model_type]}: it runs "
           f"those that classify from the first token's state with modules of their own"
           if model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
           else "transformers has no sequence-classification model for it")
    raise ConfigError(
        f"params.yaml: head.type: {HF_HEAD!r} does not support model type {model_type!r} ({why}); "
        f"supported: {sorted(DROPOUT_KEYS)}. Set head.type to one of {others}, or pick a backbone of those types."
    )


def build_hf_head(backbone: nn.Module | None, feature_dim: int, num_outputs: int, dropout: float,
                  task: str = "classification") -> HFSequenceHead:
    """The head part of the task's Hugging Face auto class (``AutoModelForSequenceClassification`` for
    classification and regression) for ``backbone``'s config.

    The pretrained pooler of ``backbone`` (BERT's) moves into the head. A backbone without one (built without
    a pooling layer) gets a new pooler, initialised as Hugging Face initialises one (normal(0,
    initializer_range) weights, zero bias) under the caller's seed; a checkpoint without pooler weights loaded
    by ``from_pretrained`` (as the backbone stage loads) already has such a pooler, and transformers warns
    that it is newly initialised. Without a backbone (``build_head`` alone) the head has BERT's layout for
    ``feature_dim``.
    """
    import transformers
    from transformers import BertConfig

    from crosstune.tasks.registry import TASKS

    auto_class = getattr(transformers, TASKS.get(task).hf_auto_class)
    if backbone is None:
        backbone_config = BertConfig(hidden_size=feature_dim, num_hidden_layers=0, num_attention_heads=1,
                                     intermediate_size=1, vocab_size=1, max_position_embeddings=1, type_vocab_size=1)
    else:
        check_hf_backbone(backbone)
        backbone_config = backbone.config
    model = auto_class.from_config(hf_config(backbone_config, num_outputs, dropout, task=task))
    prefix = model.base_model_prefix
    encoder = getattr(model, prefix)
    pooler = getattr(encoder, "pooler", None)
    if backbone is not None:
        _check_same_encoder(backbone, encoder, pooler)
        if pooler is not None and getattr(backbone, "pooler", None) is not None:
            pooler = backbone.pooler
        elif pooler is not None:
            logger.warning("head.type hf: the backbone has no pooler; %s's pooler starts as Hugging Face "
                           "initialises a new one (seeded)", type(model).__name__)
    setattr(model, prefix, EncoderOutput(pooler))
    return HFSequenceHead(model)


def _check_same_encoder(backbone: nn.Module, encoder: nn.Module, pooler: nn.Module | None) -> None:
    """The backbone's weights must be the Hugging Face model's encoder weights, name for name."""
    skip = {f"pooler.{name}" for name in (pooler.state_dict() if pooler is not None else {})}
    expected = set(encoder.state_dict()) - skip
    actual = {name for name in backbone.state_dict() if not name.startswith("pooler.")}
    if expected != actual:
        differing = sorted(expected ^ actual)[:3]
        raise ConfigError(
            f"params.yaml: head.type: {HF_HEAD!r}: the backbone ({type(backbone).__name__}) is not the encoder of "
            f"{type(encoder).__name__}'s classification model (weights differ, e.g. {differing}); set head.type to "
            f"one of {[name for name in HEADS.names() if name != HF_HEAD]}."
        )


def hf_state_dict(backbone: nn.Module, head: HFSequenceHead) -> dict[str, torch.Tensor]:
    """The whole model's tensors under the Hugging Face classification model's names (``bert.*``,
    ``classifier.*``): what ``model.safetensors`` holds for ``from_pretrained``."""
    tensors = {f"{head.base_model_prefix}.{name}": value for name, value in backbone.state_dict().items()}
    tensors.update(head.model.state_dict())
    return {name: value.detach().contiguous() for name, value in tensors.items()}


def hf_names(backbone: nn.Module, head: HFSequenceHead) -> dict[str, str]:
    """Hugging Face name -> the name in a :class:`~crosstune.transfer_model.modules.TransferModel`
    (``backbone.*``, ``head.model.*``): the inverse of :func:`hf_state_dict`, for loading."""
    names = {f"{head.base_model_prefix}.{name}": f"backbone.{name}" for name in backbone.state_dict()}
    names.update({name: f"head.model.{name}" for name in head.model.state_dict()})
    return names
