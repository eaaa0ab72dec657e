"""The model crosstune trains: a pretrained encoder, a pooling rule and a new task head.

Saved as a Hugging Face-style directory: ``config.json`` (everything needed to rebuild the
modules: backbone config, head, pooling, labels, freeze policy), ``model.safetensors`` and the
tokenizer files. Loading never unpickles code: the modules are rebuilt from the JSON config and
the tensors come from safetensors.

A ``head.type: hf`` model (:mod:`crosstune.heads.hf`) is saved in the Hugging Face form instead: a stock
``...ForSequenceClassification`` directory (Hugging Face config and tensor names) with crosstune's fields
under ``config.json``'s ``crosstune`` key, so ``transformers`` and :func:`load_transfer_model` both load it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from crosstune.backbones.audio import (
    AudioBackbone,
    audio_config,
    rebuild_audio_backbone,
)
from crosstune.backbones.staged import StagedBackbone
from crosstune.backbones.text import (
    block_path,
    drop_unused_pooler,
    embedding_module,
    embedding_path,
    save_tokenizer,
    swapped_module,
    transformer_blocks,
)
from crosstune.backbones.vision import rebuild_vision_backbone, vision_config
from crosstune.errors import ArtifactError
from crosstune.heads.registry import HF_HEAD, HF_POOLING, POOLINGS, build_head
from crosstune.io import (
    artifact_fix,
    load_tensors,
    load_weights,
    read_artifact_json,
    read_json,
    write_json,
)
from crosstune.model.saved import HF_SECTION, is_hf_form, model_settings, saved_head

logger = logging.getLogger(__name__)

MODEL_TYPES = {"text": "crosstune-text", "image": "crosstune-image", "audio": "crosstune-audio"}
STAGED_MODALITIES = ("image", "audio")  # backbones cut into stem + blocks (StagedBackbone), not Hugging Face encoders
PrefixLevel = Union[int, str]  # N = stem + bottom N blocks; "all" = pooled features of the whole backbone
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class TransferModel(nn.Module):
    """Backbone -> pooled features -> head; subclasses say how a modality's backbone gives features.

    Args:
        backbone: the pretrained feature extractor.
        head: maps pooled features to ``num_outputs`` (classes, or 1 for regression).
        spec: the JSON-able description saved in ``config.json`` (task, labels, head, pooling, freeze).
    """

    modality = ""

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = dict(spec)

    def features(self, *args: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *args: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(*args, **inputs))

    def stem_modules(self) -> list[nn.Module]:
        """What sits below the first block (embeddings, stem conv): frozen with any depth > 0."""
        raise NotImplementedError

    def prefix_outputs(self, level: PrefixLevel, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen prefix's outputs for a batch: what the cache stores (see :mod:`crosstune.prefix_cache.store`)."""
        raise NotImplementedError

    def features_from_prefix(self, level: PrefixLevel, **cached: torch.Tensor) -> torch.Tensor:
        """Pooled features from :meth:`prefix_outputs`: the rest of ``features`` on the raw inputs."""
        raise NotImplementedError

    def forward_from_prefix(self, level: PrefixLevel, **cached: torch.Tensor) -> torch.Tensor:
        """The rest of the forward pass, from :meth:`prefix_outputs`; equals ``forward`` on the raw inputs."""
        return self.head(self.features_from_prefix(level, **cached))

    def block_modules(self) -> list[list[nn.Module]]:
        """The backbone's blocks, input side first: the units ``freeze.depth`` counts."""
        raise NotImplementedError

    def parameter_layers(self) -> tuple[dict[int, int], int]:
        """Each parameter's layer (by ``id``): 0 = embeddings/stem, 1..L = blocks, L + 1 = head; and L + 1.

        Backbone parameters outside the stem and blocks (a final norm) count as the top block. What
        layer-wise rates and gradual unfreezing are counted in.
        """
        blocks = self.block_modules()
        top = len(blocks) + 1
        layers: dict[int, int] = {id(p): top for p in self.head.parameters()}
        for module in self.stem_modules():
            layers.update({id(p): 0 for p in module.parameters()})
        for index, block in enumerate(blocks, start=1):
            for module in block:
                layers.update({id(p): index for p in module.parameters()})
        for parameter in self.backbone.parameters():
            layers.setdefault(id(parameter), len(blocks))
        return layers, top


class TextTransferModel(TransferModel):
    """A Hugging Face encoder, pooled over tokens.

    Shape:
        input_ids (B, T), attention_mask (B, T) -> (B, num_outputs)
    """

    modality = "text"

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__(backbone, head, spec)
        self.pool = POOLINGS.get(spec["pooling"])

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled token states. Shape: (B, T), (B, T) -> (B, feature_dim)."""
        hidden_states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(hidden_states, attention_mask)

    def stem_modules(self) -> list[nn.Module]:
        return [embedding_module(self.backbone)]

    def prefix_outputs(self, level: PrefixLevel, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shape: -> features (B, H) for "all"; else hidden_states (B, T, H) after block ``level``."""
        if level == "all":
            return {"features": self.features(input_ids, attention_mask)}
        with self._blocks_only(0, int(level)):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return {"hidden_states": hidden}

    def features_from_prefix(self, level: PrefixLevel, features: torch.Tensor | None = None,
                             hidden_states: torch.Tensor | None = None,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if level == "all":
            return features
        with self._blocks_only(int(level), None), \
                swapped_module(self.backbone, embedding_path(self.backbone), _Passthrough()):
            hidden = self.backbone(inputs_embeds=hidden_states, attention_mask=attention_mask).last_hidden_state
        return self.pool(hidden, attention_mask)

    def block_modules(self) -> list[list[nn.Module]]:
        return [[block] for block in transformer_blocks(self.backbone)]

    def _blocks_only(self, start: int, stop: int | None) -> Any:
        """Temporarily give the encoder only blocks ``start:stop``: its loop then runs just those, with
        the model's own attention-mask handling."""
        blocks = transformer_blocks(self.backbone)
        return swapped_module(self.backbone, block_path(self.backbone), nn.ModuleList(list(blocks)[start:stop]))


class StagedTransferModel(TransferModel):
    """A staged backbone (:class:`~crosstune.backbones.staged.StagedBackbone`: image or audio) with its pooling.

    Shape:
        <input_name> (the backbone's input batch) -> (B, num_outputs)
    """

    input_name = ""

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.feature_dim)

    def features(self, *args: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Pooled features of the input batch, given by position or by its name (``input_name``)."""
        return self.backbone.forward_features(args[0] if args else inputs[self.input_name])

    def stem_modules(self) -> list[nn.Module]:
        return self.backbone.stem

    def prefix_outputs(self, level: PrefixLevel, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shape: -> features (B, D) for "all"; else feature_maps (the stage output) after block ``level``."""
        if level == "all":
            return {"features": self.features(**inputs)}
        return {"feature_maps": self.backbone.forward_stages(inputs[self.input_name], 0, int(level) + 1)}

    def features_from_prefix(self, level: PrefixLevel, features: torch.Tensor | None = None,
                             feature_maps: torch.Tensor | None = None) -> torch.Tensor:
        if level == "all":
            return features
        return self.backbone.pool(self.backbone.forward_stages(feature_maps, int(level) + 1,
                                                               len(self.backbone.blocks) + 1))

    def block_modules(self) -> list[list[nn.Module]]:
        return self.backbone.blocks


class ImageTransferModel(StagedTransferModel):
    """A CNN with global average pooling. Shape: pixel_values (B, 3, S, S) -> (B, num_outputs)."""

    modality = "image"
    input_name = "pixel_values"


class AudioTransferModel(StagedTransferModel):
    """A speech encoder mean-pooled over time. Shape: input_features (B, ...) -> (B, num_outputs)."""

    modality = "audio"
    input_name = "input_features"


class ModelForward(nn.Module):
    """What training calls: the model from raw inputs (``level`` None) or from the cached frozen prefix's
    outputs (``level`` N or "all"); returns logits, or (pooled features, logits) with ``return_features``
    (regularisers and domain adaptation work on the features). Holds the model as its only submodule,
    so modes, parameters and a DDP wrapper around it are the model's."""

    def __init__(self, model: TransferModel, level: PrefixLevel | None = None) -> None:
        super().__init__()
        self.model = model
        self.level = level

    def forward(self, return_features: bool = False, **inputs: torch.Tensor) -> Any:
        if self.level is None:
            features = self.model.features(**inputs)
        else:
            features = self.model.features_from_prefix(self.level, **inputs)
        outputs = self.model.head(features)
        return (features, outputs) if return_features else outputs


class _Passthrough(nn.Module):
    """Stands in for a text encoder's embeddings: the cached hidden states come in as ``inputs_embeds``."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        return inputs_embeds


def build_transfer_model(
    backbone: nn.Module, *, task: str, labels: list[str], head_type: str, pooling: str,
    dropout: float, hidden_dim: int, seed: int,
) -> TransferModel:
    """Put a freshly initialised head (seeded) on ``backbone`` (a Hugging Face encoder, or a vision or audio
    :class:`~crosstune.backbones.staged.StagedBackbone`).

    The hf head classifies from the first token as the stock Hugging Face model does, whatever ``pooling``
    says (``params.yaml`` must say ``cls``: :class:`~crosstune.config.HeadParams`), and takes the encoder's
    pretrained pooler where its architecture has one.
    """
    staged = isinstance(backbone, StagedBackbone)
    feature_dim = backbone.feature_dim if staged else int(backbone.config.hidden_size)
    num_outputs = len(labels) if task == "classification" else 1
    if head_type == HF_HEAD and pooling != HF_POOLING:
        logger.warning("head.type hf classifies from the first token; pooling %r does not apply", pooling)
        pooling = HF_POOLING
    torch.manual_seed(seed)
    head = build_head(head_type, feature_dim, num_outputs, dropout, hidden_dim, backbone=backbone)
    if not staged:
        backbone = drop_unused_pooler(backbone)  # after the hf head took the pooler it uses
    spec = {
        "task": task, "labels": list(labels), "pooling": _staged_pooling(backbone) if staged else pooling,
        "head": {"type": head_type, "dropout": dropout, "hidden_dim": hidden_dim, "num_outputs": num_outputs},
    }
    kind = AudioTransferModel if isinstance(backbone, AudioBackbone) else ImageTransferModel
    return (kind if staged else TextTransferModel)(backbone, head, spec)


def _staged_pooling(backbone: StagedBackbone) -> str:
    return "time_average" if isinstance(backbone, AudioBackbone) else "global_average"


def staged_config(model: TransferModel) -> dict[str, Any]:
    """The ``backbone`` entry of an image or audio model's config.json."""
    if model.modality == "audio":
        return audio_config(model.backbone.name, "none", model.backbone)
    return vision_config(model.backbone.name, "none", model.backbone)


def rebuild_staged_backbone(config: dict[str, Any]) -> StagedBackbone:
    """The architecture of a saved image or audio backbone (``config`` its ``backbone`` entry, or the backbone
    stage's config.json), randomly initialised: weights are loaded after."""
    if config.get("modality") == "audio":
        return rebuild_audio_backbone(config)
    return rebuild_vision_backbone(config)


def save_transfer_model(model: TransferModel, directory: str | Path, tokenizer: Any = None,
                        extra: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer for text) into ``directory``; in the Hugging
    Face form (see the module docstring) for an hf head."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if model.spec["head"]["type"] == HF_HEAD:
        _save_hf_form(model, directory, extra)
    else:
        if model.modality in STAGED_MODALITIES:
            backbone_entry = {"backbone": staged_config(model)}
        else:
            backbone_entry = {"backbone_config": _portable_config(model.backbone.config)}
        config = {"model_type": MODEL_TYPES[model.modality], "modality": model.modality, **model.spec,
                  **backbone_entry, **(extra or {})}
        write_json(directory / CONFIG_NAME, config)
        save_model(model, str(directory / WEIGHTS_NAME))
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)


def _portable_config(config: Any) -> dict[str, Any]:
    """A Hugging Face config as a dict, without ``_name_or_path`` (where the backbone was loaded from on this
    machine: not part of the model)."""
    return {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}


def _save_hf_form(model: TransferModel, directory: Path, extra: dict[str, Any] | None) -> None:
    """The stock Hugging Face classification directory: its config (label maps from crosstune's labels) with
    crosstune's fields under ``crosstune``, and the tensors under the Hugging Face names."""
    from safetensors.torch import save_file

    from crosstune.heads.hf import classification_config, hf_state_dict

    spec = model.spec
    config = classification_config(model.backbone.config, spec["head"]["num_outputs"], spec["head"]["dropout"],
                                   spec["labels"], spec["task"])
    config.architectures = [type(model.head.model).__name__]
    hf_config = {key: value for key, value in _portable_config(config).items() if key != HF_SECTION}
    write_json(directory / CONFIG_NAME, {**hf_config, HF_SECTION: {"modality": model.modality, **spec,
                                                                   **(extra or {})}})
    # "format": "pt" is what transformers' from_pretrained checks a safetensors file for.
    save_file(hf_state_dict(model.backbone, model.head), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


def load_transfer_model(directory: str | Path) -> tuple[TransferModel, dict[str, Any]]:
    """Rebuild a :class:`TransferModel` from its directory; returns the model and its config.

    The freeze policy in the config is *not* applied here (``requires_grad`` is not saved with the
    weights): callers that train apply the saved one (:func:`crosstune.model.saved.saved_freeze`,
    :func:`crosstune.freezing.policy.apply_policy`). A missing, truncated or corrupt file is an
    :class:`~crosstune.errors.ArtifactError` naming the file and the fix. The config returned has crosstune's
    fields at the top level in either form (:func:`crosstune.model.saved.model_settings`).
    """
    from transformers import AutoModel

    directory = Path(directory)
    raw = read_artifact_json(directory / CONFIG_NAME)
    config = model_settings(raw)
    if not is_hf_form(raw) and config.get("model_type") not in MODEL_TYPES.values():
        raise ArtifactError(
            f"{directory / CONFIG_NAME}: model_type is {config.get('model_type')!r}, not one of "
            f"{sorted(MODEL_TYPES.values())} and it has no {HF_SECTION!r} section; this is not a crosstune model "
            f"directory (run the attach-head or finetune stage to make one)."
        )
    try:
        if config.get("model_type") in (MODEL_TYPES[modality] for modality in STAGED_MODALITIES):
            backbone: nn.Module = rebuild_staged_backbone(config["backbone"])
        else:
            backbone = AutoModel.from_config(_backbone_config(config))
        head = saved_head(config)
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{directory / CONFIG_NAME}: incomplete or malformed ({type(error).__name__}: {error}); "
                            f"{artifact_fix(directory)}") from error
    model = build_transfer_model(
        backbone, task=config["task"], labels=config["labels"], head_type=head.type, pooling=head.pooling,
        dropout=head.dropout, hidden_dim=head.hidden_dim, seed=0,
    )
    model.spec = {key: config[key] for key in ("task", "labels", "pooling", "head", "freeze") if key in config}
    if is_hf_form(raw):
        _load_hf_weights(model, directory / WEIGHTS_NAME)
    else:
        load_weights(model, directory / WEIGHTS_NAME)
    model.eval()
    return model, config


def _load_hf_weights(model: TransferModel, path: Path) -> None:
    """Load a Hugging Face-form ``model.safetensors`` (Hugging Face tensor names) into ``model``."""
    from crosstune.heads.hf import hf_names

    tensors = load_tensors(path)
    names = hf_names(model.backbone, model.head)
    missing, unexpected = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
    if missing or unexpected:
        raise ArtifactError(f"{path}: does not match its config.json (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); {artifact_fix(path)}")
    try:
        model.load_state_dict({names[name]: value for name, value in tensors.items()}, strict=True)
    except RuntimeError as error:  # a tensor of the wrong shape
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArtifactError(f"{path}: does not match its config.json ({first_line}); {artifact_fix(path)}") from error


def _backbone_config(config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    from crosstune.backbones.static import register_architecture

    register_architecture()  # crosstune's own text architecture (static token embeddings)
    backbone_config = dict(config["backbone_config"])
    return AutoConfig.for_model(backbone_config.pop("model_type"), **backbone_config)


def load_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved beside the model (told the backbone's config, not crosstune's)."""
    from transformers import AutoTokenizer

    config = model_settings(read_json(Path(directory) / CONFIG_NAME))
    return AutoTokenizer.from_pretrained(str(directory), config=_backbone_config(config))
