"""fine-tune: train the attached model (from the frozen-prefix cache when valid) and save the best epoch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from crosstune.config import DEFAULT_PARAMS_PATH, load_section, to_dict
from crosstune.errors import ArtifactError, ConfigError
from crosstune.io import atomic_directory, read_json, round_metrics, write_json

logger = logging.getLogger(__name__)


def _cached_inputs(features_dir: str | None, config: dict[str, Any], finetune: Any, augment: Any,
                   has_source: bool) -> Any:
    """(level, [train, validation]) from ``features_dir`` when the cache stage built a cache there for these
    settings (its ``meta.json`` records the plan and what it was decided from), else None."""
    if features_dir is None:
        return None
    from crosstune.prefix_cache.plan import CACHED_SPLITS, META_NAME, plan_inputs
    from crosstune.prefix_cache.store import load_cached_split

    meta_path = Path(features_dir) / META_NAME
    if not meta_path.is_file():
        raise ArtifactError(f"{meta_path}: not found; run the cache stage first (dvc repro cache).")
    meta = read_json(meta_path)
    if not meta.get("cached"):
        logger.info("finetune: no frozen-prefix cache (%s)", meta.get("reason", "not built"))
        return None
    if meta.get("inputs") != plan_inputs(config, augment, finetune, has_source):
        logger.warning("finetune: the cache in %s was built for other settings (%s); running the whole model "
                       "instead. `dvc repro` rebuilds it.", features_dir, meta.get("inputs"))
        return None
    splits = [load_cached_split(Path(features_dir) / f"{name}.safetensors") for name in CACHED_SPLITS]
    logger.info("finetune: training on the cached frozen prefix (level %s)", meta["level"])
    return meta["level"], splits


def launch_finetune(script: str, argv: list[str], initial_dir: str, encoded_dir: str, model_dir: str,
                    live_dir: str, params_path: str = DEFAULT_PARAMS_PATH, features_dir: str | None = None,
                    checkpoint_dir: str | None = None, probe_dir: str | None = None) -> None:
    """What ``stages/finetune.py`` runs: :func:`finetune_stage`, or, with ``finetune.num_processes`` > 1, the
    same script again under torchrun (:func:`crosstune.training.distributed.relaunched_under_torchrun`),
    whose processes each run :func:`finetune_stage`."""
    from crosstune.training.distributed import relaunched_under_torchrun

    if relaunched_under_torchrun(script, argv, load_section("finetune", params_path).num_processes):
        return
    finetune_stage(initial_dir, encoded_dir, model_dir, live_dir, params_path, features_dir, checkpoint_dir,
                   probe_dir)


def finetune_stage(initial_dir: str, encoded_dir: str, model_dir: str, live_dir: str,
                   params_path: str = DEFAULT_PARAMS_PATH, features_dir: str | None = None,
                   checkpoint_dir: str | None = None, probe_dir: str | None = None) -> dict[str, Any]:
    """fine-tune: train the attached model and save the best epoch's weights.

    It starts from ``initial_dir`` (the attach_head stage's random head), or with ``finetune.head_init:
    probe`` from ``probe_dir`` (the same backbone, its head fitted on the frozen features: LP-FT). ``auto`` (the
    default) starts from the probe when nothing in the backbone trains (every block frozen, no LoRA): training a
    random head alone at a rate chosen for the backbone barely moves it in a few epochs, and the probe is the
    closed-form fit of that very head on those very features.

    With ``checkpoint_dir`` the run saves its state after every epoch and resumes an interrupted run
    with the same params and inputs; under torchrun (``finetune.num_processes`` > 1) every process
    trains and rank 0 writes.
    """
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared import encoded_has_source
    from crosstune.freezing.lora import merge_lora
    from crosstune.freezing.policy import apply_policy
    from crosstune.model.saved import saved_freeze
    from crosstune.model.transfer_model import (
        load_tokenizer,
        load_transfer_model,
        save_transfer_model,
    )
    from crosstune.runtime import setup
    from crosstune.training.checkpoints import Checkpointer, fingerprint
    from crosstune.training.distributed import init_distributed, shutdown
    from crosstune.training.loop import train

    base, params = load_section("base", params_path), load_section("finetune", params_path)
    augment = load_section("augment", params_path)
    device = setup(base)
    distributed = init_distributed(device)
    if distributed is not None:
        device = distributed.device
    is_main = distributed is None or distributed.is_main
    start_dir = _probe_dir(probe_dir, "probe") if params.head_init == "probe" else initial_dir
    model, config = load_transfer_model(start_dir)
    freeze = saved_freeze(config)
    report = apply_policy(model, freeze, base.seed)  # requires_grad is not saved with the weights
    if params.head_init == "auto" and backbone_frozen_whole(model, freeze):
        start_dir = _probe_dir(probe_dir, "auto")
        model, config = load_transfer_model(start_dir)
        report = apply_policy(model, freeze, base.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if augment.enabled and model.modality != "image":
        logger.warning("augment.* is set but this is a %s model: augmentation applies to images only", model.modality)
    has_source = encoded_has_source(encoded_dir)
    if params.adaptation != "none" and not has_source:
        raise ConfigError(f"params.yaml: finetune.adaptation: {params.adaptation} needs a labelled source domain, "
                          f"but the prepared data has none; point data.source at one (a table or image folder) "
                          f"or set finetune.adaptation: none.")
    cached = _cached_inputs(features_dir, config, params, augment, has_source)
    if cached is not None:
        from crosstune.prefix_cache.store import CachedBatching

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
        inputs = [Path(start_dir) / "model.safetensors", Path(start_dir) / "config.json", *data]
        from crosstune.training.precision import autocast_dtype, precision_name

        settings = {"base": to_dict(base), "finetune": to_dict(params), "augment": to_dict(augment),
                    "cached_level": level, "world_size": distributed.world_size if distributed else 1,
                    # auto's CPU choice is this machine's: a checkpoint made in one precision resumes in it only
                    "precision": precision_name(autocast_dtype(params.mixed_precision, device))}
        checkpoint = Checkpointer(checkpoint_dir, fingerprint(settings, inputs))
    if is_main:
        logger.info("finetune: %d train / %d validation examples, %d trainable of %d parameters, device %s, "
                    "params %s", len(train_split), len(validation_split), trainable, report.total_parameters,
                    device, to_dict(params))
    live = _open_live(live_dir) if is_main else None
    try:
        from crosstune.training.trial_reporting import reporter_from_environment

        result = train(model, train_split, validation_split, params, base.seed, device, live, batching, level,
                       checkpoint, distributed, source_split, on_epoch=reporter_from_environment())
        if live is not None:
            # Only deterministic values in outputs: timings (logged by `train`) would make identical runs
            # differ in `dvc metrics diff` and in dvc.lock's hashes.
            live.summary.update(round_metrics({
                "best_epoch": result.best_epoch,
                "best_validation": {key: value for key, value in result.best_metrics.items() if key != "epoch"},
                "trainable_parameters": trainable,
                "epochs_run": len(result.history),
                "precision": result.precision,  # finetune.mixed_precision: auto decides by this machine's CPU
            }))
    finally:
        if live is not None:
            live.end()
        shutdown()
    if not is_main:
        return {}
    if freeze.lora_r:
        merge_lora(model)  # the saved model is the plain architecture with the adapters folded in
    model.to("cpu")
    resolved = {"base": to_dict(base), "finetune": to_dict(params), "freeze": to_dict(freeze), "head": config["head"],
                "pooling": config["pooling"]}
    if model.modality == "image":
        resolved["augment"] = to_dict(augment)
    tokenizer = load_tokenizer(initial_dir) if model.modality == "text" else None
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging, tokenizer, extra={"max_length": params.max_length, "freeze": to_dict(freeze)})
        write_json(staging / "params.json", resolved)
        write_json(staging / "train_history.json", result.history)

    return {"best_epoch": result.best_epoch, **result.best_metrics}


def backbone_frozen_whole(model: Any, freeze: Any) -> bool:
    """Whether only the head trains: no backbone parameter left trainable by the policy, and no LoRA adapters."""
    return not freeze.lora_r and not any(parameter.requires_grad for parameter in model.backbone.parameters())


def _probe_dir(probe_dir: str | None, head_init: str) -> str:
    """The probe stage's model, which fine-tuning starts from with ``head_init`` probe (LP-FT) or auto (frozen whole)."""
    if probe_dir is None or not (Path(probe_dir) / "model.safetensors").is_file():
        why = "" if head_init == "probe" else " when every block of the backbone is frozen"
        raise ArtifactError(f"params.yaml: finetune.head_init: {head_init} starts from the probe stage's model{why}, "
                            f"but {probe_dir or 'no --probe directory'} holds none; run `dvc repro probe` (or pass "
                            f"--probe models/probe), or set finetune.head_init: random.")
    logger.info("finetune: starting from the linear probe's fitted head (%s)%s", probe_dir,
                ": LP-FT" if head_init == "probe" else ": nothing in the backbone trains (finetune.head_init: auto)")
    return probe_dir


def _open_live(live_dir: str) -> Any:
    from dvclive import Live

    return Live(live_dir, dvcyaml=None, save_dvc_exp=False, report=None)
