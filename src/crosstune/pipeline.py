"""One function per pipeline stage: what `stages/*.py` call after parsing their paths.

Each function loads only its own params sections, validates everything before writing, and
writes its outputs atomically, so a failed stage leaves earlier outputs as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from crosstune.config import DEFAULT_PARAMS_PATH, load_section, to_dict
from crosstune.errors import ConfigError
from crosstune.io import atomic_directory, read_json, write_csv, write_json

logger = logging.getLogger(__name__)


def prepare_stage(train_path: str, test_path: str | None, out_dir: str,
                  params_path: str = DEFAULT_PARAMS_PATH, source_path: str | None = None) -> dict[str, Any]:
    """prepare-target-data: validate, clean and split (and read the labelled source domain when
    ``source_path`` holds one); writes ``out_dir``."""
    from crosstune.data import prepare_target_data, write_prepared

    base, params = load_section("base", params_path), load_section("prepare", params_path)
    logger.info("prepare: train=%s test=%s source=%s params=%s", train_path, test_path, source_path, to_dict(params))
    data = prepare_target_data(train_path, test_path, params, base.seed, source_path)
    write_prepared(data, out_dir, params)
    return data.summary


def backbone_stage(prepared_dir: str, model_dir: str, encoded_dir: str, summary_path: str,
                   selection_path: str, selection_table: str,
                   params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """select-and-load-backbone: pick the backbone (by name, or the best candidate by a transferability
    score), report its score (and each candidate's domain gap when a source domain is prepared), save it,
    and encode every split for it once (``source`` too: empty when there is no source domain, so the
    later stages can always depend on it)."""
    import dataclasses

    from crosstune.data import SPLITS, UNLABELLED, has_source, read_label_info, read_modality, read_split

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
    selection, gaps = _select(params, candidates, modality, splits["train"], task, base.seed, source)
    chosen = selection.best if params.select == "score" else params.name
    params = dataclasses.replace(params, name=chosen)
    if modality == "image":
        summary = _image_backbone(params, base.seed, splits, targets, model_dir, encoded_dir)
    else:
        summary = _text_backbone(params, base.seed, splits, targets, model_dir, encoded_dir, text_augment)
    summary[f"{selection.score_name}"] = selection.scores[chosen]
    write_json(summary_path, summary)
    _write_selection(selection, gaps, chosen, params.select, selection_path, selection_table)
    logger.info("backbone summary: %s", summary)
    return summary


def _check_backbone_modality(candidate: str, modality: str) -> None:
    from crosstune.backbones import BACKBONES, split_candidate
    from crosstune.vision import VISION_BACKBONES

    backbone_modality = "image" if split_candidate(candidate)[0] in VISION_BACKBONES else "text"
    if backbone_modality != modality:
        choices = VISION_BACKBONES.names() if modality == "image" else BACKBONES.names() + ["<local dir>", "<hub id>"]
        raise ConfigError(f"params.yaml: backbone: {candidate!r} is a {backbone_modality} backbone but the "
                          f"prepared data holds {modality}s; use one of {choices}.")


def _select(params: Any, candidates: list[str], modality: str, train: Any, task: str, seed: int,
            source_frame: Any) -> tuple[Any, dict[str, dict[str, float]]]:
    """Transferability of each candidate on a seeded sample of the labelled training rows (the labelled
    source domain's when no target row has a label), and each candidate's domain gap to the source."""
    import numpy as np

    from crosstune.selecting import domain_gaps, sample_indices, score_candidates

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
        from crosstune.images import decode_images

        sample: Any = decode_images(labelled["image"].iloc[rows].tolist(), 256)  # each candidate resizes further
        if source is not None:
            source, target_sample = decode_images(source, 256), decode_images(target_sample, 256)
    else:
        sample = labelled["text"].iloc[rows].tolist()
    train_texts = train["text"].tolist() if modality == "text" else []
    selection = score_candidates(params, candidates, modality, sample, labels, train_texts, seed,
                                 regression=task == "regression")
    gaps = domain_gaps(params, candidates, modality, target_sample, source, train_texts, seed) \
        if source is not None else {}
    return selection, gaps


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
    write_json(json_path, flat)
    write_csv(table_path, pd.DataFrame({"candidate": list(selection.scores),
                                        "score": [value if math.isfinite(value) else None
                                                  for value in selection.scores.values()],
                                        "score_name": selection.score_name}))


def _text_backbone(params: Any, seed: int, splits: dict[str, Any], targets: Any, model_dir: str,
                   encoded_dir: str, text_augment: Any) -> dict[str, Any]:
    from crosstune.backbones import describe_backbone, load_backbone, save_backbone
    from crosstune.encoding import encode_texts, save_split
    from crosstune.text_augmentation import augment_split

    loaded = load_backbone(params, splits["train"]["text"].tolist(), seed)
    summary = describe_backbone(loaded, params.name)
    with atomic_directory(model_dir) as staging:
        save_backbone(loaded, staging)
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
                    encoded_dir: str) -> dict[str, Any]:
    from safetensors.torch import save_model

    from crosstune.images import ImageSplit, decode_images, save_image_split
    from crosstune.vision import build_vision_backbone, vision_config

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


def _load_saved_backbone(directory: Path) -> tuple[Any, Any]:
    """The backbone stage's directory: a Hugging Face encoder + tokenizer, or a vision backbone."""
    config = read_json(directory / "config.json")
    if config.get("modality") == "image":
        from safetensors.torch import load_model

        from crosstune.vision import rebuild_vision_backbone

        backbone = rebuild_vision_backbone(config)
        load_model(backbone, str(directory / "model.safetensors"), strict=True)
        return backbone, None
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


def attach_head_stage(backbone_dir: str, prepared_dir: str, model_dir: str, report_path: str,
                      params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """freeze-and-attach-head: put a new head on the backbone and freeze by policy."""
    from crosstune.data import read_label_info
    from crosstune.freezing import apply_freeze
    from crosstune.modeling import build_transfer_model, save_transfer_model

    base = load_section("base", params_path)
    freeze, head = load_section("freeze", params_path), load_section("head", params_path)
    task, labels = read_label_info(prepared_dir)
    backbone, tokenizer = _load_saved_backbone(Path(backbone_dir))
    model = build_transfer_model(backbone, task=task, labels=labels, head_type=head.type, pooling=head.pooling,
                                 dropout=head.dropout, hidden_dim=head.hidden_dim, seed=base.seed)
    report = apply_freeze(model, freeze.depth, freeze.patterns, freeze.train_batchnorm).as_dict()
    model.spec["freeze"] = to_dict(freeze)
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging, tokenizer)
    if freeze.lora_r:
        # Adapters are added (seeded) at training time and merged before saving; count them here.
        from crosstune.lora import apply_lora

        adapters = apply_lora(model, freeze.lora_r, freeze.lora_alpha, freeze.lora_dropout, freeze.lora_targets,
                              base.seed)
        head_parameters = sum(p.numel() for p in model.head.parameters())
        report.update({"lora_r": freeze.lora_r, "lora_parameters": adapters,
                       "trainable_parameters": adapters + head_parameters,
                       "trainable_fraction": round((adapters + head_parameters) / report["total_parameters"], 6)})
    write_json(report_path, report)
    return report


def cache_stage(initial_dir: str, encoded_dir: str, out_dir: str,
                params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """cache-frozen-prefix: run the frozen bottom of the model once over the train and validation splits.

    Writes ``out_dir/meta.json`` always (``cached: false`` and the reason when caching does not apply,
    decided without loading torch) and ``{split}.safetensors`` when it does.
    """
    from crosstune.caching import CACHED_SPLITS, META_NAME, plan_cache

    base, cache = load_section("base", params_path), load_section("cache", params_path)
    finetune, augment = load_section("finetune", params_path), load_section("augment", params_path)
    config = read_json(Path(initial_dir) / "config.json")
    plan = plan_cache(config, cache, augment, finetune, _encoded_has_source(encoded_dir))
    meta: dict[str, Any] = {"cached": plan.cached, "freeze": config.get("freeze", {})}
    if not plan.cached:
        meta["reason"] = plan.reason
        logger.info("cache: not used (%s); finetune runs the whole model on every batch", plan.reason)
        with atomic_directory(out_dir) as staging:
            write_json(staging / META_NAME, meta)
        return meta

    import time

    from crosstune.batching import batching_for, load_any_split
    from crosstune.caching import build_cached_split, save_cached_split, verify_prefix_split
    from crosstune.modeling import load_transfer_model
    from crosstune.runtime import setup

    device = setup(base)
    model, config = load_transfer_model(initial_dir)
    model.to(device)
    batching = batching_for(config, cache.batch_size, finetune.max_length)
    meta.update({"level": plan.level, "dtype": cache.dtype, "max_length": finetune.max_length})
    started = time.perf_counter()
    with atomic_directory(out_dir) as staging:
        for name in CACHED_SPLITS:
            split = load_any_split(Path(encoded_dir) / f"{name}.safetensors")
            if name == CACHED_SPLITS[0]:
                verify_prefix_split(model, plan.level, split, batching, device)
            cached = build_cached_split(model, plan.level, split, batching, cache.batch_size, cache.dtype, device)
            save_cached_split(cached, staging / f"{name}.safetensors")
            meta[f"{name}_bytes"] = sum(value.numel() * value.element_size() for value in cached.tensors.values())
        write_json(staging / META_NAME, meta)
    logger.info("cache: frozen prefix (level %s, %s) of %s computed in %.1f s", plan.level, cache.dtype,
                list(CACHED_SPLITS), time.perf_counter() - started)
    return meta


def _encoded_has_source(encoded_dir: str) -> bool:
    """Whether the backbone stage encoded a (non-empty) source domain."""
    meta = Path(encoded_dir) / "meta.json"
    return bool(read_json(meta).get("source", False)) if meta.is_file() else False


def _cached_inputs(features_dir: str | None, config: dict[str, Any], finetune: Any, augment: Any,
                   cache: Any, has_source: bool = False) -> Any:
    """(level, [train, validation]) from ``features_dir`` when it holds a cache valid for these params, else None."""
    if features_dir is None:
        return None
    from crosstune.caching import CACHED_SPLITS, META_NAME, load_cached_split, plan_cache

    meta_path = Path(features_dir) / META_NAME
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path}: not found; run the cache stage first (dvc repro cache).")
    meta = read_json(meta_path)
    if not meta.get("cached"):
        logger.info("finetune: no frozen-prefix cache (%s)", meta.get("reason", "not built"))
        return None
    plan = plan_cache(config, cache, augment, finetune, has_source)
    if plan.level != meta.get("level") or meta.get("freeze") != config.get("freeze") \
            or meta.get("max_length") != finetune.max_length:
        logger.warning("finetune: the cache in %s was built for other params (%s); running the whole model "
                       "instead. `dvc repro` rebuilds it.", features_dir, plan.reason or f"level {meta.get('level')}")
        return None
    splits = [load_cached_split(Path(features_dir) / f"{name}.safetensors") for name in CACHED_SPLITS]
    logger.info("finetune: training on the cached frozen prefix (level %s)", plan.level)
    return plan.level, splits


def finetune_stage(initial_dir: str, encoded_dir: str, model_dir: str, live_dir: str,
                   params_path: str = DEFAULT_PARAMS_PATH, features_dir: str | None = None,
                   checkpoint_dir: str | None = None) -> dict[str, Any]:
    """fine-tune: train the attached model and save the best epoch's weights.

    With ``checkpoint_dir`` the run saves its state after every epoch and resumes an interrupted run
    with the same params and inputs; under torchrun (``finetune.num_processes`` > 1) every process
    trains and rank 0 writes.
    """
    from crosstune.batching import batching_for, load_any_split
    from crosstune.checkpointing import Checkpointer, fingerprint
    from crosstune.distributed import init_distributed, shutdown
    from crosstune.freezing import apply_freeze
    from crosstune.lora import apply_lora, freeze_settings, merge_lora
    from crosstune.modeling import load_tokenizer, load_transfer_model, save_transfer_model
    from crosstune.runtime import setup
    from crosstune.training import train

    base, params = load_section("base", params_path), load_section("finetune", params_path)
    augment = load_section("augment", params_path)
    device = setup(base)
    distributed = init_distributed(device)
    if distributed is not None:
        device = distributed.device
    is_main = distributed is None or distributed.is_main
    model, config = load_transfer_model(initial_dir)
    freeze = config.get("freeze", {"depth": 0, "patterns": []})
    report = apply_freeze(model, freeze["depth"], freeze["patterns"], freeze.get("train_batchnorm", False))
    lora = freeze_settings(freeze)
    if lora is not None:
        apply_lora(model, lora["r"], lora["alpha"], lora["dropout"], lora["targets"], base.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if augment.enabled and model.modality != "image":
        logger.warning("augment.* is set but this is a %s model: augmentation applies to images only", model.modality)
    has_source = _encoded_has_source(encoded_dir)
    if params.adaptation != "none" and not has_source:
        raise ConfigError(f"params.yaml: finetune.adaptation: {params.adaptation} needs a labelled source domain, "
                          f"but the prepared data has none; point data.source at one (a table or image folder) "
                          f"or set finetune.adaptation: none.")
    cached = _cached_inputs(features_dir, config, params, augment, load_section("cache", params_path), has_source)
    if cached is not None:
        from crosstune.caching import CachedBatching

        level, (train_split, validation_split) = cached
        batching: Any = CachedBatching(params.batch_size, model.modality)
    else:
        level = None
        train_split = load_any_split(Path(encoded_dir) / "train.safetensors")
        validation_split = load_any_split(Path(encoded_dir) / "validation.safetensors")
        batching = batching_for(config, params.batch_size, params.max_length, augment)
    source_split = load_any_split(Path(encoded_dir) / "source.safetensors") if has_source else None
    checkpoint = None
    if checkpoint_dir is not None:
        # What this run reads: the cache (itself made from the encoded splits) or the encoded splits.
        data = [Path(features_dir)] if cached is not None else \
            [Path(encoded_dir) / f"{name}.safetensors" for name in ("train", "validation", "source")]
        inputs = [Path(initial_dir) / "model.safetensors", Path(initial_dir) / "config.json", *data]
        settings = {"base": to_dict(base), "finetune": to_dict(params), "augment": to_dict(augment),
                    "cached_level": level, "world_size": distributed.world_size if distributed else 1}
        checkpoint = Checkpointer(checkpoint_dir, fingerprint(settings, inputs))
    if is_main:
        logger.info("finetune: %d train / %d validation examples, %d trainable of %d parameters, device %s, "
                    "params %s", len(train_split), len(validation_split), trainable, report.total_parameters,
                    device, to_dict(params))
    live = _open_live(live_dir) if is_main else None
    try:
        result = train(model, train_split, validation_split, params, base.seed, device, live, batching, level,
                       checkpoint, distributed, source_split)
        if live is not None:
            # Only deterministic values in outputs: timings (logged by `train`) would make identical runs
            # differ in `dvc metrics diff` and in dvc.lock's hashes.
            live.summary.update({
                "best_epoch": result.best_epoch,
                "best_validation": {key: value for key, value in result.best_metrics.items() if key != "epoch"},
                "trainable_parameters": trainable,
                "epochs_run": len(result.history),
            })
    finally:
        if live is not None:
            live.end()
        shutdown()
    if not is_main:
        return {}
    if lora is not None:
        merge_lora(model)  # the saved model is the plain architecture with the adapters folded in
    model.to("cpu")
    resolved = {"base": to_dict(base), "finetune": to_dict(params), "freeze": freeze, "head": config["head"],
                "pooling": config["pooling"]}
    if model.modality == "image":
        resolved["augment"] = to_dict(augment)
    tokenizer = load_tokenizer(initial_dir) if model.modality == "text" else None
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging, tokenizer, extra={"max_length": params.max_length, "freeze": freeze})
        write_json(staging / "params.json", resolved)
        write_json(staging / "train_history.json", result.history)

    return {"best_epoch": result.best_epoch, **result.best_metrics}


def _open_live(live_dir: str) -> Any:
    from dvclive import Live

    return Live(live_dir, dvcyaml=None, save_dvc_exp=False, report=None)


def evaluate_stage(model_dir: str, encoded_dir: str, prepared_dir: str, metrics_path: str,
                   predictions_path: str, examples_path: str,
                   params_path: str = DEFAULT_PARAMS_PATH, initial_dir: str | None = None,
                   scratch_dir: str | None = None) -> dict[str, Any]:
    """evaluate: test-split metrics, per-class report, predictions, misclassified examples and baselines;
    with ``evaluate.guard`` (and ``initial_dir``) the negative-transfer guard (:mod:`crosstune.guard`),
    whose scratch model goes to ``scratch_dir``; with a source domain, the domain gap before and after."""
    from crosstune.batching import batching_for, load_any_split
    from crosstune.modeling import load_transfer_model
    from crosstune.runtime import setup

    base, params = load_section("base", params_path), load_section("evaluate", params_path)
    device = setup(base)
    model, config = load_transfer_model(model_dir)
    model.to(device)
    task, labels, modality = config["task"], config["labels"], model.modality
    headline = "f1_macro" if task == "classification" else "r2"
    splits = {name: load_any_split(Path(encoded_dir) / f"{name}.safetensors")
              for name in ("train", "validation", "test", "source")}
    batching = batching_for(config, params.batch_size, int(config.get("max_length", 512)))
    outputs = _test_outputs(model, splits["test"], batching, device)
    metrics = _score(outputs, splits["test"], task, labels)
    exported, exported_outputs = "finetuned", outputs
    if params.guard != "off" and initial_dir is not None:
        guard = _guard(model, config, initial_dir, splits, batching, params, params_path, base, device, metrics,
                       headline, scratch_dir)
        if guard.pop("_use_scratch", False):
            exported, exported_outputs = "scratch", guard.pop("_scratch_outputs")
        guard.pop("_scratch_outputs", None)
        if exported == "scratch":
            metrics = _score(exported_outputs, splits["test"], task, labels)
        metrics.update(guard)
    elif scratch_dir is not None:
        with atomic_directory(scratch_dir) as staging:
            write_json(staging / "guard.json", {"guard": "off", "scratch_model": None})
    metrics["exported_model"] = exported
    if len(splits["source"]) and initial_dir is not None:
        metrics.update(_domain_gaps(model, initial_dir, splits, batching, device, base.seed))
    metrics["test_size"] = len(splits["test"])
    _write_evaluation(exported_outputs, splits, prepared_dir, task, labels, modality, params, base.seed, headline,
                      metrics, metrics_path, predictions_path, examples_path)
    return metrics


def _test_outputs(model: Any, split: Any, batching: Any, device: str) -> Any:
    from crosstune.inference import predict_outputs

    return predict_outputs(model, split, batching, device)


def _score(outputs: Any, split: Any, task: str, labels: list[str], per_class: bool = True) -> dict[str, Any]:
    from crosstune.inference import outputs_to_predictions
    from crosstune.metrics import classification_metrics, regression_metrics

    predicted, _ = outputs_to_predictions(outputs, task)
    if task == "classification":
        return classification_metrics(split.labels.tolist(), predicted, labels, per_class=per_class)
    return regression_metrics(split.labels.tolist(), predicted)


def _guard(model: Any, config: dict[str, Any], initial_dir: str, splits: dict[str, Any], batching: Any,
           params: Any, params_path: str, base: Any, device: str, metrics: dict[str, Any], headline: str,
           scratch_dir: str | None) -> dict[str, Any]:
    """Scratch model (same architecture, data and budget, random start) and linear probe; transfer gain."""
    import numpy as np

    from crosstune.batching import batching_for
    from crosstune.guard import flag_negative_transfer, linear_probe, pooled_features, random_init_model
    from crosstune.metrics import classification_metrics
    from crosstune.modeling import load_tokenizer, load_transfer_model, save_transfer_model
    from crosstune.training import train

    finetune, augment = load_section("finetune", params_path), load_section("augment", params_path)
    task, labels = config["task"], config["labels"]
    logger.info("guard: training %s from random initialisation on the same data and budget", config.get("modality"))
    scratch, _ = random_init_model(initial_dir, base.seed)
    train_batching = batching_for(config, finetune.batch_size, finetune.max_length, augment)
    source = splits["source"] if len(splits["source"]) else None
    train(scratch, splits["train"], splits["validation"], finetune, base.seed, device, batching=train_batching,
          source_split=source)
    scratch_outputs = _test_outputs(scratch, splits["test"], batching, device)
    scratch_metrics = _score(scratch_outputs, splits["test"], task, labels, per_class=False)
    gain = metrics[headline] - scratch_metrics[headline]
    result: dict[str, Any] = {"guard": params.guard, "transfer_gain": gain,
                              "negative_transfer": flag_negative_transfer(gain, headline, metrics[headline],
                                                                          scratch_metrics[headline])}
    for key in ("accuracy", "f1_macro", "r2", "mae"):
        if key in scratch_metrics:
            result[f"scratch_{key}"] = scratch_metrics[key]
            result[f"finetuned_{key}"] = metrics[key]
    if result["negative_transfer"]:
        from crosstune.guard import WHAT_TO_TRY

        result["negative_transfer_advice"] = WHAT_TO_TRY
    validation = {name: _score(_test_outputs(candidate, splits["validation"], batching, device), splits["validation"],
                               task, labels, per_class=False)[headline]
                  for name, candidate in (("finetuned", model), ("scratch", scratch))}
    result.update({f"{name}_validation_{headline}": value for name, value in validation.items()})
    if params.guard == "fallback" and validation["scratch"] > validation["finetuned"]:
        logger.warning("guard: fallback: the scratch model validates better (%s %.4f vs %.4f); it is the exported "
                       "model (%s)", headline, validation["scratch"], validation["finetuned"], scratch_dir)
        result["_use_scratch"] = True
    result["_scratch_outputs"] = scratch_outputs
    if task == "classification":
        pretrained, _ = load_transfer_model(initial_dir)
        pretrained.to(device)
        rows = [(split, split.labels >= 0) for split in (splits["train"], source) if split is not None]
        train_features = np.concatenate([pooled_features(pretrained, split, batching, device)[mask.numpy()]
                                         for split, mask in rows])
        train_labels = np.concatenate([split.labels[mask].numpy() for split, mask in rows])
        predicted = linear_probe(train_features, train_labels,
                                 pooled_features(pretrained, splits["test"], batching, device), base.seed)
        probe = classification_metrics(splits["test"].labels.tolist(), predicted.tolist(), labels)
        result.update({"probe_accuracy": probe["accuracy"], "probe_f1_macro": probe["f1_macro"]})
    if scratch_dir is not None:
        scratch.to("cpu")
        tokenizer = load_tokenizer(initial_dir) if scratch.modality == "text" else None
        with atomic_directory(scratch_dir) as staging:
            save_transfer_model(scratch, staging, tokenizer, extra={"max_length": config.get("max_length", 512),
                                                                   "freeze": {"depth": 0, "patterns": []}})
            write_json(staging / "guard.json", {"guard": params.guard, "scratch_model": "random initialisation, "
                                                "same architecture, data and finetune params"})
            write_json(staging / "params.json", {"base": to_dict(base), "finetune": to_dict(finetune),
                                                 "freeze": {"depth": 0, "patterns": []}, "head": config["head"],
                                                 "pooling": config.get("pooling"), "initialisation": "random"})
    return result


def _domain_gaps(model: Any, initial_dir: str, splits: dict[str, Any], batching: Any, device: str,
                 seed: int) -> dict[str, float]:
    """Proxy A-distance of source vs target (training pool) features, before (the attached pretrained
    model) and after fine-tuning."""
    from crosstune.guard import domain_gap
    from crosstune.modeling import load_transfer_model

    before, _ = load_transfer_model(initial_dir)
    before.to(device)
    gaps = {"proxy_a_distance_before": domain_gap(before, splits["source"], splits["train"], batching, device, seed),
            "proxy_a_distance_after": domain_gap(model, splits["source"], splits["train"], batching, device, seed)}
    logger.info("domain gap (proxy A-distance, source vs target): %.3f before, %.3f after",
                gaps["proxy_a_distance_before"], gaps["proxy_a_distance_after"])
    return gaps


def _write_evaluation(outputs: Any, splits: dict[str, Any], prepared_dir: str, task: str, labels: list[str],
                      modality: str, params: Any, seed: int, headline: str, metrics: dict[str, Any],
                      metrics_path: str, predictions_path: str, examples_path: str) -> None:
    """Predictions table, misclassified figure, baselines and the metrics file."""
    import pandas as pd

    from crosstune.data import has_source, read_split
    from crosstune.figures import misclassified_figure
    from crosstune.inference import outputs_to_predictions

    predicted, confidence = outputs_to_predictions(outputs, task)
    test_split = splits["test"]
    test_frame = read_split(prepared_dir, "test")
    table = pd.DataFrame({modality: test_frame[modality], "label": test_frame["label"]})
    if task == "classification":
        table["predicted"] = [labels[i] for i in predicted]
        table["confidence"] = confidence
        misclassified_figure(examples_path, table["label"].tolist(), table["predicted"].tolist(),
                             images=test_split.images if modality == "image" else None,
                             texts=table[modality].tolist() if modality == "text" else None)
    else:
        table["predicted"] = predicted
        misclassified_figure(examples_path, [], [], texts=[])
    # Baselines learn from every labelled training row: the target's, and the source domain's.
    frames = [read_split(prepared_dir, "train")] + ([read_split(prepared_dir, "source")] if has_source(prepared_dir)
                                                    else [])
    if modality == "image":
        import numpy as np

        from crosstune.baselines import image_pixels

        parts = [splits["train"]] + ([splits["source"]] if len(splits["source"]) else [])
        masks = [part.labels >= 0 for part in parts]
        train_inputs = np.concatenate([image_pixels(part.images[mask]) for part, mask in zip(parts, masks)])
        train_targets = [labels[int(i)] for part, mask in zip(parts, masks) for i in part.labels[mask]]
        test_inputs = image_pixels(test_split.images)
    else:
        training = pd.concat(frames, ignore_index=True)
        if task == "classification":
            training = training[training["label"] != ""]
        train_inputs, train_targets, test_inputs = training["text"], training["label"], test_frame["text"]
    metrics.update(_baseline_metrics(params.baselines, task, modality, labels, test_split.labels.tolist(),
                                     train_inputs, train_targets, test_inputs, seed, headline, metrics[headline]))
    write_json(metrics_path, metrics)
    write_csv(predictions_path, table)
    logger.info("test %s", {key: round(value, 4) for key, value in metrics.items()
                            if isinstance(value, float) and not key.startswith(tuple(labels))})


def _baseline_metrics(names: Any, task: str, modality: str, labels: list[str], targets: list[Any],
                      train_inputs: Any, train_targets: Any, test_inputs: Any, seed: int, headline: str,
                      model_score: float) -> dict[str, Any]:
    """Each baseline's scores, and the fine-tuned model's gain over the best of them."""
    from crosstune.baselines import run_baseline
    from crosstune.metrics import classification_metrics, regression_metrics

    metrics: dict[str, Any] = {}
    best: tuple[str, float] | None = None
    for name in names:
        predictions = run_baseline(name, task, train_inputs, train_targets, test_inputs, seed, modality)
        if task == "classification":
            index = {label: position for position, label in enumerate(labels)}
            scores = classification_metrics(targets, [index[label] for label in predictions], labels)
        else:
            scores = regression_metrics(targets, predictions)
        for key in ("accuracy", "f1_macro", "f1_weighted", "mse", "mae", "r2"):
            if key in scores:
                metrics[f"baseline_{name}_{key}"] = scores[key]
        if best is None or scores[headline] > best[1]:
            best = (name, scores[headline])
    if best is not None:
        gain = model_score - best[1]
        metrics[f"gain_over_best_baseline_{headline}"] = gain
        metrics["beats_all_baselines"] = bool(gain > 0)
        if gain <= 0:
            logger.warning("the fine-tuned model's test %s %.4f does not beat baseline %r (%.4f): transfer did not "
                           "pay off here; try another freeze.depth, finetune.lr or backbone.",
                           headline, model_score, best[0], best[1])
    return metrics
