"""The model crosstune trains: a pretrained encoder, a pooling rule and a new task head.

One subclass of :class:`TransferModel` per modality says how its backbone gives pooled features, how its
frozen prefix is cut for the cache and what a traced (ONNX) batch looks like; the task
(:mod:`crosstune.tasks`) says how wide the head's output is. Saving and loading:
:mod:`crosstune.transfer_model.storage`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Union

import torch
from torch import nn

from crosstune.backbones.staged import StagedBackbone
from crosstune.backbones.text import (
    block_path,
    drop_unused_pooler,
    embedding_module,
    embedding_path,
    swapped_module,
    transformer_blocks,
)
from crosstune.heads.registry import HF_HEAD, HF_POOLING, TOKEN_POOLING, build_head, pooling_function

logger = logging.getLogger(__name__)

PrefixLevel = Union[int, str]  # N = stem + bottom N blocks; "all" = pooled features of the whole backbone
ONNX_EXAMPLE_BATCH = 2  # the traced batch: not 0 or 1, which torch.export would fix as a constant
ONNX_EXAMPLE_TOKENS = 8  # its sequence length, likewise


class TransferModel(nn.Module):
    """Backbone -> pooled features -> head; subclasses say how a modality's backbone gives features.

    Args:
        backbone: the pretrained feature extractor.
        head: maps pooled features to the task's outputs (``num_outputs``: one per class, or one value).
        spec: the JSON-able description saved in ``config.json`` (task, labels, head, pooling, freeze).
    """

    modality: ClassVar[str] = ""
    by_modality: ClassVar[dict[str, type["TransferModel"]]] = {}

    prefix_passthrough: ClassVar[tuple[str, ...]] = ()  # batch inputs the rest of the model reads beside the prefix
    new_head: ClassVar[bool] = True  # the head starts untrained (False: a pretrained decoder is the head)
    takes_lora: ClassVar[bool] = False  # the backbone is a transformer whose linear layers can carry LoRA adapters

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.modality and not cls.__dict__.get("chosen_by_task", False):
            TransferModel.by_modality[cls.modality] = cls

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = dict(spec)

    def features(self, *args: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *args: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(*args, **inputs))

    def forward_parts(self, level: PrefixLevel | None, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features, outputs) from raw inputs (``level`` None) or from the cached prefix's outputs: what
        training calls (:class:`ModelForward`); regularisers and domain adaptation read the features."""
        features = self.features(**inputs) if level is None else self.features_from_prefix(level, **inputs)
        return features, self.head(features)

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

    def backbone_entry(self) -> dict[str, Any]:
        """What a crosstune-form config.json records of the backbone, to rebuild its architecture."""
        raise NotImplementedError

    def onnx_input_names(self) -> tuple[str, ...]:
        """The keys of a batch's ``inputs``: the traced graph's input names."""
        raise NotImplementedError

    def onnx_example_inputs(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """A batch shaped as the batching loop makes them, to trace the model with."""
        raise NotImplementedError

    def onnx_dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """Per input, its dynamic axes as torch.export ``Dim`` objects (their names become the graph's axis names)."""
        from torch.export import Dim

        return ({0: Dim("batch")},)

    def onnx_outputs(self, **inputs: torch.Tensor) -> torch.Tensor:
        """What the ONNX graph computes from a batch's inputs: the forward pass's logits, by default."""
        return self(**inputs)


class TextTransferModel(TransferModel):
    """A Hugging Face encoder, pooled over tokens.

    Shape:
        input_ids (B, T), attention_mask (B, T) -> (B, num_outputs)
    """

    modality = "text"
    takes_lora = True

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__(backbone, head, spec)
        self.pool = pooling_function(spec["pooling"])
        self.per_token = spec["pooling"] == TOKEN_POOLING  # a tag per token: the head sees every token's state

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
        """Shape: -> features (B, H) for "all" (per token: hidden_states (B, T, H) of the whole encoder); else
        hidden_states (B, T, H) after block ``level``."""
        if level == "all":
            features = self.features(input_ids, attention_mask)
            return {"hidden_states": features} if self.per_token else {"features": features}
        with self._blocks_only(0, int(level)):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return {"hidden_states": hidden}

    def features_from_prefix(self, level: PrefixLevel, features: torch.Tensor | None = None,
                             hidden_states: torch.Tensor | None = None,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if level == "all":
            return hidden_states if self.per_token else features
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

    def backbone_entry(self) -> dict[str, Any]:
        return {"backbone_config": portable_config(self.backbone.config)}

    def onnx_input_names(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask")

    def onnx_example_inputs(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Random token ids with a padded second row, so the attention mask's padding path is traced."""
        vocab_size = int(self.backbone.config.vocab_size)
        input_ids = torch.randint(0, vocab_size, (ONNX_EXAMPLE_BATCH, ONNX_EXAMPLE_TOKENS), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, ONNX_EXAMPLE_TOKENS // 2 :] = 0
        return input_ids, attention_mask

    def onnx_dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        from torch.export import Dim

        batch, sequence = Dim("batch"), Dim("sequence")
        return ({0: batch, 1: sequence}, {0: batch, 1: sequence})


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

    def backbone_entry(self) -> dict[str, Any]:
        return {"backbone": self.backbone.saved_config("none")}

    def onnx_input_names(self) -> tuple[str, ...]:
        return (self.input_name,)


class ImageTransferModel(StagedTransferModel):
    """A CNN with global average pooling. Shape: pixel_values (B, 3, S, S) -> (B, num_outputs)."""

    modality = "image"
    input_name = "pixel_values"

    def onnx_example_inputs(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        size = self.backbone.preprocessing.image_size
        return (torch.randn(ONNX_EXAMPLE_BATCH, 3, size, size, generator=generator),)


class AudioTransferModel(StagedTransferModel):
    """A speech encoder mean-pooled over time. Shape: input_features (B, ...) -> (B, num_outputs)."""

    modality = "audio"
    input_name = "input_features"

    def onnx_example_inputs(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Random waveforms through the backbone's own feature extraction: the features' real layout."""
        from crosstune.data.audio import AudioBatcher

        preprocessing = self.backbone.preprocessing
        waveforms = torch.randint(-3000, 3000, (ONNX_EXAMPLE_BATCH, preprocessing.clip_samples), generator=generator)
        return (AudioBatcher(preprocessing)(waveforms.to(torch.int16)),)

    def onnx_dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        from torch.export import Dim

        axis = self.time_axis()
        return ({0: Dim("batch")} if axis is None else {0: Dim("batch"), axis: Dim("time")},)

    def time_axis(self) -> int | None:
        """The axis of the input features that grows with the clip, or None to keep time fixed.

        The feature layouts differ ((B, 80, T) for Whisper, (B, T, 40) for GE2E), so the axis is found by
        extracting features of two clip lengths. Time stays fixed for recurrent backbones: torch.export lowers
        ``nn.LSTM`` with the traced sequence length fixed in a Reshape, so such a graph fails on any other
        length. Nothing is lost: the predictor cuts or pads every clip to the saved ``clip_samples``.
        """
        from crosstune.data.audio import AudioBatcher

        if any(isinstance(module, nn.RNNBase) for module in self.modules()):
            return None
        preprocessing = self.backbone.preprocessing
        batcher = AudioBatcher(preprocessing)
        short, long = (batcher(torch.zeros(1, samples, dtype=torch.int16)).shape
                       for samples in (preprocessing.sample_rate // 2, preprocessing.sample_rate))
        growing = [axis for axis, (before, after) in enumerate(zip(short, long)) if before != after]
        return growing[0] if len(growing) == 1 else None


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
        features, outputs = self.model.forward_parts(self.level, **inputs)
        return (features, outputs) if return_features else outputs


class _Passthrough(nn.Module):
    """Stands in for a text encoder's embeddings: the cached hidden states come in as ``inputs_embeds``."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        return inputs_embeds


def build_transfer_model(
    backbone: nn.Module, *, task: str, labels: list[str], head_type: str, pooling: str,
    dropout: float, hidden_dim: int, seed: int,
) -> TransferModel:
    """Put a freshly initialised head (seeded) on ``backbone`` (a Hugging Face text encoder, or a
    :class:`~crosstune.backbones.staged.StagedBackbone` of the modality it declares), as wide as ``task``'s
    output for ``labels``.

    The hf head classifies from the first token as the stock Hugging Face model does, whatever ``pooling``
    says (``params.yaml`` must say ``cls``: :func:`crosstune.heads.registry.check_head_params`), and takes the
    encoder's pretrained pooler where its architecture has one.
    """
    from crosstune.tasks.registry import TASKS

    staged = isinstance(backbone, StagedBackbone)
    feature_dim = backbone.feature_dim if staged else int(backbone.config.hidden_size)
    num_outputs = TASKS.get(task).num_outputs(labels)
    if TASKS.get(task).pooling:  # a per-token task: the head sees every token, whatever head.pooling says
        pooling = TASKS.get(task).pooling
    elif head_type == HF_HEAD and pooling != HF_POOLING:
        logger.warning("head.type hf classifies from the first token; pooling %r does not apply", pooling)
        pooling = HF_POOLING
    torch.manual_seed(seed)
    head = build_head(head_type, feature_dim, num_outputs, dropout, hidden_dim, backbone=backbone, task=task)
    if not staged:
        backbone = drop_unused_pooler(backbone)  # after the hf head took the pooler it uses
    spec = {
        "task": task, "labels": list(labels), "pooling": backbone.pooling_name if staged else pooling,
        "head": {"type": head_type, "dropout": dropout, "hidden_dim": hidden_dim, "num_outputs": num_outputs},
    }
    modality = backbone.modality if staged else TextTransferModel.modality
    return TransferModel.by_modality[modality](backbone, head, spec)


def portable_config(config: Any) -> dict[str, Any]:
    """A Hugging Face config as a dict, without ``_name_or_path`` (where the backbone was loaded from on this
    machine: not part of the model)."""
    return {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}
