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
                  params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """prepare-target-data: validate, clean and split; writes ``out_dir``."""
    from crosstune.data import prepare_target_data, write_prepared

    base, params = load_section("base", params_path), load_section("prepare", params_path)
    logger.info("prepare: train=%s test=%s params=%s", train_path, test_path, to_dict(params))
    data = prepare_target_data(train_path, test_path, params, base.seed)
    write_prepared(data, out_dir, params)
    return data.summary


def backbone_stage(prepared_dir: str, model_dir: str, encoded_dir: str, summary_path: str,
                   selection_path: str, selection_table: str, params_path: str = DEFAULT_PARAMS_PATH,
                   source_dir: str | None = None) -> dict[str, Any]:
    """select-and-load-backbone: pick the backbone (by name, or the best candidate by a transferability
    score), report its score (and each candidate's domain gap when ``source_dir`` holds a source sample),
    save it, and encode every split for it once."""
    import dataclasses

    from crosstune.data import SPLITS, read_label_info, read_modality, read_split

    base, params = load_section("base", params_path), load_section("backbone", params_path)
    task, labels = read_label_info(prepared_dir)
    modality = read_modality(prepared_dir)
    splits = {name: read_split(prepared_dir, name) for name in SPLITS}
    candidates = list(params.candidates) if params.select == "score" else [params.name]
    for candidate in candidates:
        _check_backbone_modality(candidate, modality)
    logger.info("backbone: %s (%s), %d/%d/%d examples", candidates if params.select == "score" else params.name,
                modality, *(len(splits[name]) for name in SPLITS))
    index = {label: position for position, label in enumerate(labels)}

    def targets(frame: Any) -> "torch.Tensor":
        import torch

        if task == "classification":
            return torch.tensor([index[label] for label in frame["label"]], dtype=torch.int64)
        return torch.tensor(frame["label"].to_numpy(), dtype=torch.float32)

    selection, gaps = _select(params, candidates, modality, splits["train"], task, base.seed, source_dir)
    chosen = selection.best if params.select == "score" else params.name
    params = dataclasses.replace(params, name=chosen)
    if modality == "image":
        summary = _image_backbone(params, base.seed, splits, targets, model_dir, encoded_dir)
    else:
        summary = _text_backbone(params, base.seed, splits, targets, model_dir, encoded_dir)
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
            source_dir: str | None) -> tuple[Any, dict[str, dict[str, float]]]:
    """Transferability of each candidate on a seeded sample of the training split, and its domain gap
    to the source sample when there is one."""
    import numpy as np

    from crosstune.data import read_source_sample
    from crosstune.selecting import domain_gaps, sample_indices, score_candidates

    if task != "classification" and params.score != "logme":
        raise ConfigError(f"params.yaml: backbone.score: {params.score!r} needs class labels; with a regression "
                          f"task use backbone.score: logme.")
    rows = sample_indices(len(train), params.selection_samples, seed)
    labels = np.asarray(train["label"].iloc[rows])
    source = read_source_sample(source_dir, modality) if source_dir else None
    if source is not None:
        source = [source[i] for i in sample_indices(len(source), params.selection_samples, seed)]
    if modality == "image":
        from crosstune.images import decode_images

        sample: Any = decode_images(train["image"].iloc[rows].tolist(), 256)  # each candidate resizes further
        source = decode_images(source, 256) if source is not None else None
    else:
        sample = train["text"].iloc[rows].tolist()
    train_texts = train["text"].tolist() if modality == "text" else []
    selection = score_candidates(params, candidates, modality, sample, labels, train_texts, seed,
                                 regression=task == "regression")
    gaps = domain_gaps(params, candidates, modality, sample, source, train_texts, seed) if source is not None else {}
    return selection, gaps


def _write_selection(selection: Any, gaps: dict[str, dict[str, float]], chosen: str, method: str, json_path: str,
                     table_path: str) -> None:
    import pandas as pd

    # Scores only: the seconds each took are logged, not written, so identical runs give identical files.
    flat: dict[str, Any] = {"select": method, "score": selection.score_name, "selected": chosen}
    for candidate, value in selection.scores.items():
        flat[f"{candidate}_{selection.score_name}"] = value
        for measure, gap in gaps.get(candidate, {}).items():
            flat[f"{candidate}_{measure}"] = gap
    write_json(json_path, flat)
    write_csv(table_path, pd.DataFrame({"candidate": list(selection.scores), "score": list(selection.scores.values()),
                                        "score_name": selection.score_name}))


def _text_backbone(params: Any, seed: int, splits: dict[str, Any], targets: Any, model_dir: str,
                   encoded_dir: str) -> dict[str, Any]:
    from crosstune.backbones import describe_backbone, load_backbone, save_backbone
    from crosstune.encoding import encode_texts, save_split

    loaded = load_backbone(params, splits["train"]["text"].tolist(), seed)
    summary = describe_backbone(loaded, params.name)
    with atomic_directory(model_dir) as staging:
        save_backbone(loaded, staging)
    with atomic_directory(encoded_dir) as staging:
        for name, frame in splits.items():
            encoded = encode_texts(loaded.tokenizer, frame["text"].tolist(), targets(frame), params.max_length)
            save_split(encoded, staging / f"{name}.safetensors")
            summary[f"{name}_mean_tokens"] = round(float(encoded.lengths.float().mean()), 2)
            summary[f"{name}_truncated"] = int((encoded.lengths >= params.max_length).sum())
        write_json(staging / "meta.json", {"modality": "text", "backbone": params.name,
                                           "max_length": params.max_length,
                                           "pad_token_id": loaded.tokenizer.pad_token_id})
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
            summary[f"{name}_stored_shape"] = "x".join(map(str, images.shape[1:]))
        write_json(staging / "meta.json", {"modality": "image", "backbone": params.name, "image_size": size})
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
    plan = plan_cache(config, cache, augment, finetune)
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


def _cached_inputs(features_dir: str | None, config: dict[str, Any], finetune: Any, augment: Any,
                   cache: Any) -> Any:
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
    plan = plan_cache(config, cache, augment, finetune)
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
    cached = _cached_inputs(features_dir, config, params, augment, load_section("cache", params_path))
    if cached is not None:
        from crosstune.caching import CachedBatching

        level, (train_split, validation_split) = cached
        batching: Any = CachedBatching(params.batch_size, model.modality)
    else:
        level = None
        train_split = load_any_split(Path(encoded_dir) / "train.safetensors")
        validation_split = load_any_split(Path(encoded_dir) / "validation.safetensors")
        batching = batching_for(config, params.batch_size, params.max_length, augment)
    checkpoint = None
    if checkpoint_dir is not None:
        # What this run reads: the cache (itself made from the encoded splits) or the encoded splits.
        data = [Path(features_dir)] if cached is not None else \
            [Path(encoded_dir) / "train.safetensors", Path(encoded_dir) / "validation.safetensors"]
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
                       checkpoint, distributed)
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
                   params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """evaluate: test-split metrics, per-class report, predictions, misclassified examples and baselines."""
    import pandas as pd

    from crosstune.batching import batching_for, load_any_split
    from crosstune.data import read_split
    from crosstune.figures import misclassified_figure
    from crosstune.inference import outputs_to_predictions, predict_outputs
    from crosstune.metrics import classification_metrics, regression_metrics
    from crosstune.modeling import load_transfer_model
    from crosstune.runtime import setup

    base, params = load_section("base", params_path), load_section("evaluate", params_path)
    device = setup(base)
    model, config = load_transfer_model(model_dir)
    model.to(device)
    task, labels, modality = config["task"], config["labels"], model.modality
    test_split = load_any_split(Path(encoded_dir) / "test.safetensors")
    batching = batching_for(config, params.batch_size, int(config.get("max_length", 512)))
    outputs = predict_outputs(model, test_split, batching, device)
    predicted, confidence = outputs_to_predictions(outputs, task)
    targets = test_split.labels.tolist()
    test_frame = read_split(prepared_dir, "test")
    train_frame = read_split(prepared_dir, "train")
    table = pd.DataFrame({modality: test_frame[modality], "label": test_frame["label"]})
    if task == "classification":
        metrics: dict[str, Any] = classification_metrics(targets, predicted, labels, per_class=True)
        headline = "f1_macro"
        table["predicted"] = [labels[i] for i in predicted]
        table["confidence"] = confidence
        misclassified_figure(examples_path, table["label"].tolist(), table["predicted"].tolist(),
                             images=test_split.images if modality == "image" else None,
                             texts=table[modality].tolist() if modality == "text" else None)
    else:
        metrics = regression_metrics(targets, predicted)
        headline = "r2"
        table["predicted"] = predicted
        misclassified_figure(examples_path, [], [], texts=[])
    metrics["test_size"] = len(targets)
    if modality == "image":
        from crosstune.baselines import image_pixels

        train_inputs = image_pixels(load_any_split(Path(encoded_dir) / "train.safetensors").images)
        test_inputs = image_pixels(test_split.images)
    else:
        train_inputs, test_inputs = train_frame["text"], test_frame["text"]
    metrics.update(_baseline_metrics(params.baselines, task, modality, labels, targets, train_inputs,
                                     train_frame["label"], test_inputs, base.seed, headline, metrics[headline]))
    write_json(metrics_path, metrics)
    write_csv(predictions_path, table)
    logger.info("test %s", {key: round(value, 4) for key, value in metrics.items()
                            if isinstance(value, float) and not key.startswith(tuple(labels))})
    return metrics


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
