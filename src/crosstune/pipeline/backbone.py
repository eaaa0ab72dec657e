"""select-and-load-backbone: rank or name the backbone, save it, and encode every split for it once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from crosstune.config import DEFAULT_PARAMS_PATH, load_section
from crosstune.errors import ConfigError
from crosstune.freezing.auto_depth import BLOCK_SCORES
from crosstune.io import (
    atomic_directory,
    round_metrics,
    write_json,
    write_metrics,
    write_metrics_csv,
)

logger = logging.getLogger(__name__)


def backbone_stage(prepared_dir: str, model_dir: str, encoded_dir: str, summary_path: str,
                   selection_path: str, selection_table: str,
                   params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """select-and-load-backbone: pick the backbone (by name, or the best candidate by a transferability
    score), report its score (and each candidate's domain gap when a source domain is prepared), save it,
    and encode every split for it once (``source`` too: empty when there is no source domain, so the
    later stages can always depend on it)."""
    import dataclasses

    from crosstune.data.prepared import (
        SPLITS,
        UNLABELLED,
        has_source,
        read_label_info,
        read_modality,
        read_split,
    )

    base, params = load_section("base", params_path), load_section("backbone", params_path)
    text_augment = load_section("text_augment", params_path)
    task, labels = read_label_info(prepared_dir)
    modality = read_modality(prepared_dir)
    splits = {name: read_split(prepared_dir, name) for name in SPLITS}
    if has_source(prepared_dir):
        splits["source"] = read_split(prepared_dir, "source")
    else:
        splits["source"] = splits["test"].iloc[:0]
    candidates = list(params.candidates) if params.select == "score" else [params.name]
    for candidate in candidates:
        _check_backbone_modality(candidate, modality)
    logger.info("backbone: %s (%s), %d/%d/%d examples", candidates if params.select == "score" else params.name,
                modality, *(len(splits[name]) for name in SPLITS))
    index = {label: position for position, label in enumerate(labels)}

    def targets(frame: Any) -> "torch.Tensor":
        import torch

        if task == "classification":  # -1: an unlabelled target row (the adaptation pool)
            return torch.tensor([index[label] if label != "" else UNLABELLED for label in frame["label"]],
                                dtype=torch.int64)
        return torch.tensor(frame["label"].to_numpy(), dtype=torch.float32)

    source = splits["source"] if len(splits["source"]) else None
    selection, gaps, blocks = _select(params, candidates, modality, splits["train"], task, base.seed, source)
    chosen = selection.best if params.select == "score" else params.name
    params = dataclasses.replace(params, name=chosen)
    if modality == "image":
        summary = _image_backbone(params, base.seed, splits, targets, model_dir, encoded_dir, blocks)
    elif modality == "audio":
        summary = _audio_backbone(params, base.seed, splits, targets, model_dir, encoded_dir, blocks)
    else:
        summary = _text_backbone(params, base.seed, splits, targets, model_dir, encoded_dir, text_augment, blocks)
    summary[f"{selection.score_name}"] = selection.scores[chosen]
    write_metrics(summary_path, summary)
    _write_selection(selection, gaps, chosen, params.select, selection_path, selection_table)
    logger.info("backbone summary: %s", summary)
    return summary


def _check_backbone_modality(candidate: str, modality: str) -> None:
    from crosstune.backbones.audio import AUDIO_BACKBONES
    from crosstune.backbones.text import BACKBONES, split_candidate
    from crosstune.backbones.vision import VISION_BACKBONES

    name = split_candidate(candidate)[0]
    backbone_modality = "image" if name in VISION_BACKBONES else "audio" if name in AUDIO_BACKBONES else "text"
    if backbone_modality != modality:
        choices = {"image": VISION_BACKBONES.names(), "audio": AUDIO_BACKBONES.names()}.get(
            modality, BACKBONES.names() + ["<local dir>", "<hub id>"])
        raise ConfigError(f"params.yaml: backbone: {candidate!r} is a {backbone_modality} backbone but the "
                          f"prepared data holds {modality} inputs; use one of {choices}.")


def _select(params: Any, candidates: list[str], modality: str, train: Any, task: str, seed: int,
            source_frame: Any) -> tuple[Any, dict[str, dict[str, float]], dict[str, Any]]:
    """Transferability of each candidate on a seeded sample of the labelled training rows (the labelled
    source domain's when no target row has a label), each candidate's domain gap to the source, and the chosen
    candidate's transferability after its stem and after each block (what ``freeze.depth: auto`` reads)."""
    import numpy as np

    from crosstune.selection.candidates import (
        block_scores,
        domain_gaps,
        sample_indices,
        score_candidates,
    )

    if task != "classification" and params.score != "logme":
        raise ConfigError(f"params.yaml: backbone.score: {params.score!r} needs class labels; with a regression "
                          f"task use backbone.score: logme.")
    target_pool = train[modality].tolist()
    labelled = train[train["label"] != ""] if task == "classification" else train
    if len(labelled) < 10 and source_frame is not None:
        labelled = source_frame  # unsupervised: score on the labelled source domain
    rows = sample_indices(len(labelled), params.selection_samples, seed)
    labels = np.asarray(labelled["label"].iloc[rows])
    source = None
    if source_frame is not None:
        source = [source_frame[modality].iloc[i] for i in sample_indices(len(source_frame), params.selection_samples,
                                                                         seed)]
        target_rows = sample_indices(len(target_pool), params.selection_samples, seed)
        target_sample = [target_pool[i] for i in target_rows]
    if modality == "image":
        from crosstune.data.images import decode_images

        sample: Any = decode_images(labelled["image"].iloc[rows].tolist(), 256)  # each candidate resizes further
        if source is not None:
            source, target_sample = decode_images(source, 256), decode_images(target_sample, 256)
    else:  # texts, or recording paths: each audio candidate decodes them at its own sample rate
        sample = labelled[modality].iloc[rows].tolist()
    train_texts = train["text"].tolist() if modality == "text" else []
    selection = score_candidates(params, candidates, modality, sample, labels, train_texts, seed,
                                 regression=task == "regression")
    gaps = domain_gaps(params, candidates, modality, target_sample, source, train_texts, seed) \
        if source is not None else {}
    chosen = selection.best if params.select == "score" else params.name
    score_name, values = block_scores(params, chosen, modality, sample, labels, train_texts, seed,
                                      regression=task == "regression")
    blocks = {"score": score_name, "samples": len(labels), "scores": [value if np.isfinite(value) else None
                                                                      for value in values]}
    return selection, gaps, blocks


def _write_selection(selection: Any, gaps: dict[str, dict[str, float]], chosen: str, method: str, json_path: str,
                     table_path: str) -> None:
    import pandas as pd

    # Scores only: the seconds each took are logged, not written, so identical runs give identical files.
    flat: dict[str, Any] = {"select": method, "score": selection.score_name, "selected": chosen}
    import math

    for candidate, value in selection.scores.items():
        flat[f"{candidate}_{selection.score_name}"] = value if math.isfinite(value) else None
        for measure, gap in gaps.get(candidate, {}).items():
            flat[f"{candidate}_{measure}"] = gap
    write_metrics(json_path, flat)
    write_metrics_csv(table_path, pd.DataFrame({"candidate": list(selection.scores),
                                        "score": [value if math.isfinite(value) else None
                                                  for value in selection.scores.values()],
                                        "score_name": selection.score_name}))


def _text_backbone(params: Any, seed: int, splits: dict[str, Any], targets: Any, model_dir: str,
                   encoded_dir: str, text_augment: Any, blocks: dict[str, Any]) -> dict[str, Any]:
    from crosstune.backbones.text import describe_backbone, load_backbone, save_backbone
    from crosstune.data.text_augmentation import augment_split
    from crosstune.data.text_encoding import encode_texts, save_split

    loaded = load_backbone(params, splits["train"]["text"].tolist(), seed)
    summary = describe_backbone(loaded, params.name)
    with atomic_directory(model_dir) as staging:
        save_backbone(loaded, staging)
        write_json(staging / BLOCK_SCORES, round_metrics(blocks))
    with atomic_directory(encoded_dir) as staging:
        for name, frame in splits.items():
            encoded = encode_texts(loaded.tokenizer, frame["text"].tolist(), targets(frame), params.max_length)
            if name in text_augment.splits and text_augment.copies:
                encoded = augment_split(encoded, text_augment, loaded.tokenizer, seed)
                summary[f"{name}_augmented_rows"] = len(encoded) - len(frame)
            save_split(encoded, staging / f"{name}.safetensors")
            if not len(encoded):
                continue  # no source domain: an empty split, nothing to summarise
            summary[f"{name}_mean_tokens"] = round(float(encoded.lengths.float().mean()), 2)
            summary[f"{name}_truncated"] = int((encoded.lengths >= params.max_length).sum())
        write_json(staging / "meta.json", {"modality": "text", "backbone": params.name,
                                           "max_length": params.max_length,
                                           "pad_token_id": loaded.tokenizer.pad_token_id,
                                           "source": bool(len(splits["source"]))})
    return summary


def _image_backbone(params: Any, seed: int, splits: dict[str, Any], targets: Any, model_dir: str,
                    encoded_dir: str, blocks: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import save_model

    from crosstune.backbones.vision import build_vision_backbone, vision_config
    from crosstune.data.images import ImageSplit, decode_images, save_image_split

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


def _audio_backbone(params: Any, seed: int, splits: dict[str, Any], targets: Any, model_dir: str,
                    encoded_dir: str, blocks: dict[str, Any]) -> dict[str, Any]:
    """Save the audio backbone with its clip length fixed from the training recordings
    (``backbone.clip_seconds``), and decode every split once at its sample rate."""
    from safetensors.torch import save_model

    from crosstune.backbones.audio import audio_config, build_audio_backbone
    from crosstune.data.audio import (
        AudioSplit,
        clip_length,
        decode_audio,
        save_audio_split,
    )

    backbone = build_audio_backbone(params.name, params.weights, seed)
    rate = backbone.preprocessing.sample_rate
    length = clip_length(splits["train"]["audio"].tolist(), rate, params.clip_seconds, backbone.max_seconds)
    backbone.set_clip(length, params.clip_align)
    summary: dict[str, Any] = {
        "name": params.name, "source": f"weights {params.weights}", "architecture": type(backbone.body).__name__,
        "num_parameters": sum(parameter.numel() for parameter in backbone.parameters()),
        "num_blocks": len(backbone.blocks), "hidden_size": backbone.feature_dim, "sample_rate": rate,
        "clip_seconds": round(length / rate, 4),
    }
    with atomic_directory(model_dir) as staging:
        write_json(staging / "config.json", audio_config(params.name, params.weights, backbone))
        save_model(backbone, str(staging / "model.safetensors"))
        write_json(staging / BLOCK_SCORES, round_metrics(blocks))
    with atomic_directory(encoded_dir) as staging:
        for name, frame in splits.items():
            waveforms = decode_audio(frame["audio"].tolist(), rate, length, params.clip_align)
            save_audio_split(AudioSplit(waveforms, targets(frame)), staging / f"{name}.safetensors")
        write_json(staging / "meta.json", {"modality": "audio", "backbone": params.name, "sample_rate": rate,
                                           "clip_samples": length, "source": bool(len(splits["source"]))})
    return summary

