"""What the attach_head, probe and scratch stages do for a detector (``prepare.task: detection``).

**attach_head** builds torchvision's FCOS on the saved image backbone (:func:`crosstune.detection.storage.
build_detection_model`) and freezes the bottom ``freeze.depth`` blocks as for every image model.

**probe** is the guard's frozen-backbone detector: FCOS's feature pyramid and towers cannot be fitted in closed
form, so they train by gradient (AdamW, ``probe.epochs`` at ``probe.lr``) on the frozen backbone's outputs, which
are computed once, in memory (the cache stage's frozen prefix carried through the rest of the backbone when it
built one, else the whole backbone run here). It answers "would the pretrained features have done without
fine-tuning?" and is the start of fine-tuning with ``finetune.head_init: probe`` (LP-FT).

**scratch** is the same detector with a randomly initialised backbone, BatchNorm trainable (random statistics
mean nothing to freeze), trained with the ``finetune`` params.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from crosstune.config import to_dict
from crosstune.errors import ConfigError

logger = logging.getLogger(__name__)

HEAD_TYPE = "fcos"  # what a detector's config records as its head (no ``head.type`` of the classifiers)


def attach_detector(backbone_dir: str, prepared_dir: str, model_dir: str, freeze: Any, head: Any,
                    seed: int) -> dict[str, Any]:
    """FCOS on the backbone stage's saved backbone, frozen by ``freeze``; saved into ``model_dir``. Returns the
    freeze report."""
    from crosstune.data.prepared_dir import read_input_column, read_label_info
    from crosstune.detection.storage import DetectorSettings, build_detection_model, save_detector
    from crosstune.freezing.policy import apply_freeze
    from crosstune.io import atomic_directory, read_artifact_json
    from crosstune.modalities import get_modality

    if freeze.depth == "auto":
        raise ConfigError("params.yaml: freeze.depth: auto scores blocks for one label per image; for detection give "
                          "a number of backbone blocks or all.")
    if freeze.lora_r:
        raise ConfigError("params.yaml: freeze.lora_r adds adapters to a text encoder's or recogniser's attention; a "
                          "detector's backbone is a CNN: set freeze.lora_r: 0.")
    _, labels = read_label_info(prepared_dir)
    config = read_artifact_json(Path(backbone_dir) / "config.json")
    backbone, _ = get_modality("image").load_saved_backbone(Path(backbone_dir))
    pretrained = str(config.get("weights", "none")).lower() != "none"
    settings = DetectorSettings(canvas=tuple(config["canvas"]), fpn_channels=head.fpn_channels,
                                frozen_batchnorm=pretrained)
    spec = {"task": "detection", "labels": list(labels), "freeze": to_dict(freeze),
            "input_column": read_input_column(prepared_dir), "backbone_weights": config.get("weights", "none"),
            "head": {"type": HEAD_TYPE, "fpn_channels": head.fpn_channels}, "pooling": "none"}
    model = build_detection_model(backbone, list(labels), settings, spec, seed)
    report = apply_freeze(model, freeze.depth, freeze.patterns, freeze.train_batchnorm).as_dict()
    report["depth_requested"] = freeze.depth
    with atomic_directory(model_dir) as staging:
        save_detector(model, staging)
    logger.info("attach_head: FCOS (pyramid %d channels) on %s, %d classes, canvas %s; %s", head.fpn_channels,
                config.get("name"), len(labels), "x".join(map(str, settings.canvas)), report)
    return report


def probe_detector(model: Any, config: dict[str, Any], encoded_dir: str, features_dir: str | None, model_dir: str,
                   params_path: str) -> dict[str, Any]:
    """Train the attached detector's pyramid and towers on its frozen backbone (module docstring) and save it
    into ``model_dir``. Returns the stage's summary metrics."""
    from crosstune.config import BaseParams, CacheParams, FinetuneParams, ProbeParams, load_section
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.freezing.policy import apply_freeze
    from crosstune.io import atomic_directory, read_json, round_metrics, write_json
    from crosstune.prefix_cache.plan import CACHED_SPLITS, META_NAME
    from crosstune.prefix_cache.store import CachedBatching, build_cached_split, load_cached_split
    from crosstune.runtime import setup
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import training_context
    from crosstune.transfer_model.settings import PROBE_RECORD
    from crosstune.transfer_model.storage import save_transfer_model

    base, probe = load_section(BaseParams, params_path), load_section(ProbeParams, params_path)
    cache, finetune = load_section(CacheParams, params_path), load_section(FinetuneParams, params_path)
    params = dataclasses.replace(FinetuneParams(), epochs=probe.epochs, lr=probe.lr, batch_size=probe.batch_size,
                                 loss=finetune.loss, select_metric=finetune.select_metric, class_weights="none")
    device = setup(base)
    apply_freeze(model, "all", (), False)
    meta = read_json(Path(features_dir) / META_NAME) if features_dir and \
        (Path(features_dir) / META_NAME).is_file() else {}
    if meta.get("cached"):  # the cache stage's frozen prefix, carried through the rest of the backbone once
        model.to(device)
        splits = [_through_backbone(model, load_cached_split(Path(features_dir) / f"{name}.safetensors"),
                                    cache.batch_size, device) for name in CACHED_SPLITS]
        source = f"the cache stage's (level {meta['level']})"
    else:  # the frozen backbone's outputs, once, in memory
        batching = batching_for(config, cache.batch_size, 0)
        model.to(device)
        splits = [build_cached_split(model, "all", load_any_split(Path(encoded_dir) / f"{name}.safetensors"),
                                     batching, cache.batch_size, "float32", device) for name in CACHED_SPLITS]
        source = "computed once here"
    logger.info("probe: training the pyramid and FCOS towers on the frozen backbone (%s outputs, %d epochs at lr "
                "%g)", source, params.epochs, params.lr)
    data = TrainingData(splits[0], splits[1], CachedBatching(params.batch_size, "image"), "all", None)
    result = train(model, data, params, base.seed, training_context(base, params))
    model.to("cpu")
    validation = {key: value for key, value in result.best_metrics.items() if key != "epoch"}
    record = {"fitted_on": len(splits[0]), "trained": "the feature pyramid and FCOS towers, backbone frozen",
              "best_epoch": result.best_epoch, "select_metric": params.select_metric,
              "validation": round_metrics(validation)}
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging)
        write_json(staging / PROBE_RECORD, record)
        write_json(staging / "params.json", {"base": to_dict(base), "probe": to_dict(probe),
                                             "freeze": model.spec["freeze"], "head": config["head"],
                                             "initialisation": "frozen pretrained backbone, pyramid and towers "
                                                               "trained"})
        write_json(staging / "train_history.json", result.history)
    return {"probe_epochs": params.epochs, "probe_best_epoch": result.best_epoch, "probe_fitted_on": len(splits[0]),
            **{f"probe_validation_{key}": value for key, value in validation.items()
               if key in ("loss", "map", "map_50")}}


def _through_backbone(model: Any, split: Any, batch_size: int, device: str) -> Any:
    """A cached split at level N carried to level ``all`` (the pyramid's inputs): only the blocks above N run."""
    import torch

    from crosstune.prefix_cache.store import CachedSplit

    if split.level == "all":
        return split
    model.eval()
    passthrough = set(model.prefix_passthrough)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            part = {key: value[start:start + batch_size].to(device).float() for key, value in split.tensors.items()
                    if key not in passthrough}
            chunks.append({key: value.cpu() for key, value in model.advance_prefix(split.level, part).items()})
    tensors = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
    tensors.update({key: split.tensors[key] for key in passthrough if key in split.tensors})
    return CachedSplit("all", tensors, split.labels)


def random_init_detector(attached: Any, config: dict[str, Any], seed: int) -> Any:
    """The attached detector's architecture with a randomly initialised (seeded) backbone whose BatchNorm trains,
    and pyramid and towers as attached; nothing frozen: the guard's no-transfer detector."""
    import torch

    from crosstune.backbones.vision import rebuild_vision_backbone
    from crosstune.detection.storage import build_detection_model
    from crosstune.transfer_model.settings import NO_FREEZE

    torch.manual_seed(seed)
    settings = dataclasses.replace(attached.settings, frozen_batchnorm=False)
    model = build_detection_model(rebuild_vision_backbone(config["backbone"]), list(config["labels"]), settings,
                                  dict(attached.spec, freeze=to_dict(NO_FREEZE), backbone_weights="none"), seed)
    model.detector.backbone.fpn.load_state_dict(attached.detector.backbone.fpn.state_dict())
    model.detector.head.load_state_dict(attached.detector.head.state_dict())
    return model
