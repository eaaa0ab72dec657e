"""probe: the linear probe as a model, the frozen pretrained backbone with its head's output layer fitted on
the frozen features in closed form (:mod:`crosstune.training.closed_form_head`, the fit the task provides).

It is both the start of LP-FT (``finetune.head_init: probe``) and the third model the negative-transfer
guard compares (fine-tuned, probe, scratch). It reads the frozen-prefix cache where the cache stage built
one, so with a frozen prefix only the blocks above it run; without one, the whole backbone runs once over
train and validation (and the labelled source domain, which the cache never holds).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    BaseParams,
    CacheParams,
    FinetuneParams,
    load_section,
    to_dict,
)
from crosstune.errors import ArtifactError
from crosstune.io import (
    atomic_directory,
    read_json,
    round_metrics,
    write_json,
    write_metrics,
)

logger = logging.getLogger(__name__)


def _zero_shot(model: Any, config: dict[str, Any], encoded_dir: str, model_dir: str, metrics_path: str, base: Any,
               finetune: Any, batch_size: int, device: str) -> dict[str, Any]:
    """The probe of a model whose head is pretrained (a recogniser's decoder): nothing to fit, so the probe is
    the pretrained model as its authors run it (Whisper: 30-second windows, not the window fine-tuning reads),
    scored on validation: the zero-shot reference of the guard."""
    from crosstune.transcription.storage import pretrained_as_released

    model = pretrained_as_released(model)
    from crosstune.data.batching import AudioBatching, load_any_split
    from crosstune.tasks.registry import TASKS
    from crosstune.transcription.decoding import reference_texts, transcribe_split
    from crosstune.transfer_model.settings import PROBE_RECORD
    from crosstune.transfer_model.storage import save_transfer_model

    task = TASKS.get(config["task"])
    task.check_select_metric(finetune.select_metric)
    validation = load_any_split(Path(encoded_dir) / "validation.safetensors")
    model.to(device)
    loss_fn = task.build_loss(finetune.loss, None, finetune.label_smoothing)
    hypotheses, loss = transcribe_split(model, validation, AudioBatching(batch_size, model.preprocessing), device,
                                        loss_fn=loss_fn)
    scores = {"loss": loss, **task.score_texts(reference_texts(model, validation), hypotheses)}
    model.to("cpu")
    logger.info("probe: the pretrained model without fine-tuning (zero-shot) validates at %s",
                ", ".join(f"{key}={value:.4f}" for key, value in scores.items()))
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging)
        write_json(staging / PROBE_RECORD, {"fitted_on": 0, "zero_shot": True, "validation": round_metrics(scores)})
        write_json(staging / "params.json", {"base": to_dict(base), "freeze": model.spec["freeze"],
                                             "initialisation": "pretrained, not fine-tuned (zero-shot)"})
    summary = {"probe_zero_shot": True, **{f"probe_validation_{key}": value for key, value in scores.items()}}
    write_metrics(metrics_path, summary)
    return summary


def probe_stage(initial_dir: str, encoded_dir: str, model_dir: str, metrics_path: str,
                params_path: str = DEFAULT_PARAMS_PATH, features_dir: str | None = None) -> dict[str, Any]:
    """Fit the attached model's output layer on its frozen features (from the cache stage's ``features_dir``
    where it holds a cache); save it as ``model_dir`` and write the chosen strength and its validation
    metrics to ``metrics_path``."""
    import time

    import torch

    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared_dir import encoded_has_source
    from crosstune.modalities import get_modality
    from crosstune.prefix_cache.plan import CACHED_SPLITS, META_NAME
    from crosstune.prefix_cache.store import CachedBatching, load_cached_split
    from crosstune.runtime import setup
    from crosstune.tasks.registry import TASKS
    from crosstune.training.closed_form_head import (
        fit_output_layer,
        head_inputs,
        set_output_layer,
    )
    from crosstune.transfer_model.settings import PROBE_RECORD
    from crosstune.transfer_model.storage import (
        load_transfer_model,
        save_transfer_model,
    )

    base, finetune = load_section(BaseParams, params_path), load_section(FinetuneParams, params_path)
    cache = load_section(CacheParams, params_path)
    device = setup(base)
    model, config = load_transfer_model(initial_dir)
    if TASKS.get(config["task"]).model_form == "detector":  # pyramid and towers: trained, not fitted in closed form
        from crosstune.detection.stages import probe_detector

        summary = probe_detector(model, config, encoded_dir, features_dir, model_dir, params_path)
        write_metrics(metrics_path, summary)
        return summary
    if not model.new_head:
        return _zero_shot(model, config, encoded_dir, model_dir, metrics_path, base, finetune, cache.batch_size, device)
    model.to(device)
    task, labels = TASKS.get(config["task"]), config["labels"]
    task.check_select_metric(finetune.select_metric)
    encoded = Path(encoded_dir)
    started = time.perf_counter()
    meta: dict[str, Any] = {}
    if features_dir is not None:
        if not (Path(features_dir) / META_NAME).is_file():
            raise ArtifactError(f"{Path(features_dir) / META_NAME}: not found; run the cache stage first "
                                f"(dvc repro cache).")
        meta = read_json(Path(features_dir) / META_NAME)
    plain = batching_for(config, cache.batch_size, finetune.max_length)
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in CACHED_SPLITS:  # train, validation
        if meta.get("cached"):
            split: Any = load_cached_split(Path(features_dir) / f"{name}.safetensors")
            inputs = head_inputs(model, split, CachedBatching(cache.batch_size, model.modality), device, meta["level"])
        else:
            split = load_any_split(encoded / f"{name}.safetensors")
            inputs = head_inputs(model, split, plain, device)
        rows[name] = inputs, split.labels.numpy()
    if encoded_has_source(encoded_dir):
        source = load_any_split(encoded / "source.safetensors")
        rows["source"] = head_inputs(model, source, plain, device), source.labels.numpy()
    train_parts = [rows[name] for name in ("source", "train") if name in rows]
    train_inputs = np.concatenate([part[0] for part in train_parts])
    train_targets = np.concatenate([part[1] for part in train_parts])
    labelled = task.labelled(train_targets)
    train_inputs, train_targets = train_inputs[labelled], train_targets[labelled]
    weights = task.class_weights(finetune.class_weights, torch.from_numpy(train_targets), len(labels))
    loss_fn = task.build_loss(finetune.loss, weights, finetune.label_smoothing)
    fit = fit_output_layer(train_inputs, train_targets, *rows["validation"], task, labels, finetune.select_metric,
                           weights, loss_fn, base.seed)
    set_output_layer(model.head, fit)
    model.to("cpu")
    seconds = time.perf_counter() - started
    logger.info("probe: output layer fitted on %d frozen-feature rows (%s) in %.1f s; validation %s %.4f",
                len(train_targets), "from the prefix cache" if meta.get("cached") else "whole backbone", seconds,
                finetune.select_metric, fit.validation[finetune.select_metric])
    record = {"fitted_on": int(len(train_targets)), "strength": fit.strength,
              "select_metric": finetune.select_metric, "validation": round_metrics(fit.validation),
              "tried": [round_metrics(row) for row in fit.tried]}
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging, get_modality(model.modality).load_tokenizer(initial_dir),
                            extra={"max_length": finetune.max_length})
        write_json(staging / PROBE_RECORD, record)
        write_json(staging / "params.json", {"base": to_dict(base), "freeze": model.spec["freeze"],
                                             "head": config["head"], "initialisation": "linear probe"})
    summary = {"probe_strength": fit.strength, "probe_fitted_on": int(len(train_targets)),
               **{f"probe_validation_{key}": value for key, value in fit.validation.items()
                  if key in ("loss", *task.summary_metrics)}}
    write_metrics(metrics_path, summary)
    return summary
