"""``BACKBONES``: every registered backbone across modalities, each entry declaring its modality and where its
loader lives; and what a ``backbone.name`` that is not registered (a local directory, a hub id) holds.

Torch-free: an entry names its loader as ``module:function`` (plus arguments), imported only when the backbone
is built, so `crosstune check`, the zoo catalogue and the backbone stage's first checks list and classify
names without importing torch (as :mod:`transformers`' lazy auto mappings do).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from crosstune.errors import ConfigError
from crosstune.registry import Registry


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: its name, the modality it reads and its loader.

    The loader's signature is its modality's: text loaders take ``(params, train_texts, seed)`` and return a
    :class:`~crosstune.backbones.text.LoadedBackbone`; image and audio ones take ``(weights, seed)`` and return
    a :class:`~crosstune.backbones.staged.StagedBackbone`.
    """

    name: str
    modality: str
    module: str
    function: str
    arguments: tuple[Any, ...] = ()

    def loader(self) -> Callable[..., Any]:
        """The loading function (its module imported now)."""
        function = getattr(importlib.import_module(self.module), self.function)
        return function(*self.arguments) if self.arguments else function


BACKBONES: Registry[BackboneEntry] = Registry("backbone")


def _add(name: str, modality: str, module: str, function: str, *arguments: Any) -> None:
    BACKBONES.register(name)(BackboneEntry(name, modality, f"crosstune.backbones.{module}", function, arguments))


_add("minilm-l6", "text", "text", "load_minilm_l6")
_add("mpnet-base", "text", "text", "load_mpnet_base")
_add("minilm-static", "text", "text", "load_minilm_static")
_add("tiny-bert", "text", "text", "load_tiny_bert")
for _variant in (0, 1, 2):
    _add(f"efficientnet-lite{_variant}", "image", "vision", "efficientnet_lite", _variant)
for _name in ("resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"):
    _add(_name, "image", "vision", "torchvision_backbone", _name)
_add("mnist-cnn", "image", "vision", "mnist_cnn")
_add("tiny-cnn", "image", "vision", "tiny_cnn")
_add("whisper-tiny-en", "audio", "audio", "whisper_tiny_en")
_add("ge2e-speaker", "audio", "audio", "ge2e_speaker")
_add("silero-vad", "audio", "audio", "silero_vad")
_add("tiny-audio-cnn", "audio", "audio", "tiny_audio_cnn")


def split_candidate(spec: str) -> tuple[str, int | None]:
    """``"minilm-l6@2"`` -> ``("minilm-l6", 2)``: a backbone cut to its first K blocks; plain names -> None."""
    name, separator, blocks = spec.rpartition("@")
    if separator and blocks.isdigit() and name:
        return name, int(blocks)
    return spec, None


def is_hub_id(name: str) -> bool:
    """``org/model`` or ``hub:org/model``: a Hugging Face hub id."""
    return name.startswith("hub:") or (name.count("/") == 1 and not name.startswith((".", "/")))


def backbone_modality(spec: str) -> str:
    """The modality ``backbone.name`` (or a candidate) reads, by what it is: a registered entry declares it; a
    local directory holds a config.json that records it (a crosstune backbone or model) or is a Hugging Face
    text encoder's; a hub id names a Hugging Face text encoder."""
    name, _ = split_candidate(spec)
    if name in BACKBONES:
        return BACKBONES.get(name).modality
    path = Path(name)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            return "text"  # the text loader says what such a directory lacks
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "text"
        return str(config.get("modality", config.get("crosstune", {}).get("modality", "text")))
    if is_hub_id(name):
        return "text"
    raise ConfigError(f"params.yaml: backbone.name: {name!r} is not a registered backbone {BACKBONES.names()}, "
                      f"not an existing local directory, and not a hub id like 'org/model'; set one of those.")


def backbone_names(modality: str) -> list[str]:
    """The registered backbones that read ``modality``."""
    return [name for name in BACKBONES if BACKBONES.get(name).modality == modality]


def registered_loader(name: str, modality: str) -> Callable[..., Any]:
    """The loader of registered backbone ``name``, which must read ``modality``; other names list the valid ones."""
    if name not in BACKBONES or BACKBONES.get(name).modality != modality:
        raise KeyError(f"unknown {modality} backbone {name!r}; valid {modality} backbone names: "
                       f"{backbone_names(modality)}")
    return BACKBONES.get(name).loader()
