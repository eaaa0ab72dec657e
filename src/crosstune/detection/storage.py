"""Detector directories: ``config.json`` (the backbone's record, the detector's settings, crosstune's spec) and
``model.safetensors``; the modules are rebuilt from the JSON and the tensors loaded strictly, never unpickled."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crosstune.errors import ArtifactError
from crosstune.io import artifact_fix, load_weights, read_artifact_json, write_json

if TYPE_CHECKING:
    from crosstune.transfer_model.detection import DetectionModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "crosstune-detector"


@dataclass(frozen=True)
class DetectorSettings:
    """What rebuilds the detector around a backbone: the canvas images are letterboxed onto (height, width), the
    pyramid's width, post-processing, and whether the backbone's BatchNorm is frozen (a pretrained backbone)."""

    canvas: tuple[int, int]
    fpn_channels: int = 128
    score_threshold: float = 0.05
    nms_threshold: float = 0.6
    detections_per_image: int = 100
    frozen_batchnorm: bool = True
    # (stage index, stride, channels) of the backbone stages feeding the pyramid, found once when the detector is
    # first built (a forward pass, :func:`crosstune.detection.model.pyramid_levels`) and read back after
    pyramid: tuple[tuple[int, int, int], ...] | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DetectorSettings":
        pyramid = raw.get("pyramid")
        return cls(**{**raw, "canvas": tuple(raw["canvas"]),
                      "pyramid": tuple(tuple(level) for level in pyramid) if pyramid is not None else None})


def build_detection_model(backbone: Any, labels: list[str], settings: DetectorSettings, spec: dict[str, Any],
                          seed: int) -> "DetectionModel":
    """A :class:`DetectionModel` for ``labels`` on ``backbone`` (new layers seeded by ``seed``)."""
    from crosstune.detection.model import build_detector
    from crosstune.transfer_model.detection import DetectionModel

    detector = build_detector(backbone, len(labels), min_size=min(settings.canvas), max_size=max(settings.canvas),
                              fpn_channels=settings.fpn_channels, pretrained=settings.frozen_batchnorm,
                              score_threshold=settings.score_threshold, nms_threshold=settings.nms_threshold,
                              detections_per_image=settings.detections_per_image, seed=seed,
                              levels=settings.pyramid)
    settings = replace(settings, pyramid=tuple(detector.backbone.levels))
    return DetectionModel(detector, {**spec, "labels": list(labels)}, settings)


def save_detector(model: "DetectionModel", directory: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = asdict(model.settings)
    settings["canvas"] = list(settings["canvas"])
    settings["pyramid"] = [list(level) for level in settings["pyramid"]] if settings["pyramid"] else None
    write_json(directory / CONFIG_NAME, {"model_type": MODEL_TYPE, "modality": "image", **model.spec,
                                         "backbone": model.backbone_entry(), "detector": settings, **(extra or {})})
    save_model(model, str(directory / WEIGHTS_NAME))


def load_detector(directory: str | Path) -> tuple["DetectionModel", dict[str, Any]]:
    """A detector directory as a :class:`DetectionModel` (eval mode) and its config; a missing, malformed or
    mismatched file is an :class:`~crosstune.errors.ArtifactError` naming it and the fix."""
    from crosstune.backbones.vision import rebuild_vision_backbone

    directory = Path(directory)
    config = read_artifact_json(directory / CONFIG_NAME)
    if config.get("model_type") != MODEL_TYPE:
        raise ArtifactError(f"{directory / CONFIG_NAME}: model_type is {config.get('model_type')!r}, not "
                            f"{MODEL_TYPE!r}: not a detector directory; {artifact_fix(directory)}")
    try:
        settings = DetectorSettings.from_dict(config["detector"])
        spec = {key: config[key] for key in ("task", "labels", "freeze", "input_column", "backbone_weights", "head",
                                                  "pooling")
                if key in config}
        model = build_detection_model(rebuild_vision_backbone(config["backbone"]), config["labels"], settings,
                                      spec, seed=0)
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{directory / CONFIG_NAME}: incomplete or malformed ({type(error).__name__}: {error}); "
                            f"{artifact_fix(directory)}") from error
    load_weights(model, directory / WEIGHTS_NAME)
    model.eval()
    return model, config
