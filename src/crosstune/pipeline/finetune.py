"""fine-tune: train the attached model (from the frozen-prefix cache when valid) and save the best epoch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    AugmentParams,
    BaseParams,
    FinetuneParams,
    load_section,
    to_dict,
)
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

    if relaunched_under_torchrun(script, argv, load_section(FinetuneParams, params_path).num_processes):
        return
    finetune_stage(initial_dir, encoded_dir, model_dir, live_dir, params_path, features_dir, checkpoint_dir,
                   probe_dir)


def finetune_stage(initial_dir: str, encoded_dir: str, model_dir: str, live_dir: str,
                   params_path: str = DEFAULT_PARAMS_PATH, features_dir: str | None = None,
                   checkpoint_dir: str | None = None, probe_dir: str | None = None,
                   callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """fine-tune: train the attached model and save the best epoch's weights.

    The model is built once, from ``initial_dir`` (the attach_head stage's architecture, its random head and
    freeze policy); its start weights are that directory's, or with ``finetune.head_init: probe`` those of
    ``probe_dir`` (the same backbone, its head fitted on the frozen features: LP-FT). ``auto`` (the default)
    starts from the probe when nothing in the backbone trains (every block frozen, no LoRA): training a random
    head alone at a rate chosen for the backbone barely moves it in a few epochs, and the probe is the
    closed-form fit of that very head on those very features.

    With ``checkpoint_dir`` the run saves its state after every epoch and resumes an interrupted run with the
    same params, inputs and run context (precision, world size); under torchrun (``finetune.num_processes`` > 1)
    every process trains and rank 0 writes. ``callbacks`` (:class:`~crosstune.training.callbacks.TrainingCallback`)
    see every step and epoch, after `crosstune tune`'s trial reporter when one is set.
    """
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared_dir import encoded_has_source
    from crosstune.experiments.trial_pruning import reporter_from_environment
    from crosstune.freezing.lora import merge_lora
    from crosstune.modalities import get_modality
    from crosstune.training.checkpoints import Checkpointer, fingerprint
    from crosstune.training.distributed import shutdown
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.optimization import check_names
    from crosstune.training.run_context import training_context
    from crosstune.transfer_model.settings import saved_freeze
    from crosstune.transfer_model.storage import (
        load_transfer_model,
        save_transfer_model,
    )

    base, params = load_section(BaseParams, params_path), load_section(FinetuneParams, params_path)
    augment = load_section(AugmentParams, params_path)
    check_names(params)
    context = training_context(base, params)
    model, config = load_transfer_model(initial_dir)
    modality = get_modality(model.modality)
    freeze = saved_freeze(config)
    start_dir, report = _start_weights(model, freeze, params.head_init, initial_dir, probe_dir, base.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if (augment.enabled or augment.masks_audio) and not modality.augments(augment):
        logger.warning("augment.* is set but not for a %s model: transforms apply to images, time_mask_* and "
                       "freq_mask_* to recordings", model.modality)
    has_source = encoded_has_source(encoded_dir)
    if params.adaptation != "none" and not has_source:
        raise ConfigError(f"params.yaml: finetune.adaptation: {params.adaptation} needs a labelled source domain, "
                          f"but the prepared data has none; point data.source at one (a table or image folder) "
                          f"or set finetune.adaptation: none.")
    source_split = load_any_split(Path(encoded_dir) / "source.safetensors") if has_source else None
    cached = _cached_inputs(features_dir, config, params, augment, has_source)
    if cached is not None:
        from crosstune.prefix_cache.store import CachedBatching

        level, (train_split, validation_split) = cached
        data = TrainingData(train_split, validation_split, CachedBatching(params.batch_size, model.modality), level,
                            source_split)
    else:
        data = TrainingData(load_any_split(Path(encoded_dir) / "train.safetensors"),
                            load_any_split(Path(encoded_dir) / "validation.safetensors"),
                            batching_for(config, params.batch_size, params.max_length, augment), None, source_split)
    checkpoint = None
    if checkpoint_dir is not None:
        # What this run reads: the cache (itself made from the encoded splits) or the encoded splits.
        read = [Path(features_dir)] if cached is not None else \
            [Path(encoded_dir) / f"{name}.safetensors" for name in ("train", "validation", "source")]
        inputs = [Path(start_dir) / "model.safetensors", Path(start_dir) / "config.json", *read]
        settings = {"base": to_dict(base), "finetune": to_dict(params), "augment": to_dict(augment),
                    "cached_level": data.level, **context.fingerprint_settings()}
        checkpoint = Checkpointer(checkpoint_dir, fingerprint(settings, inputs))
    if context.is_main:
        logger.info("finetune: %d train / %d validation examples, %d trainable of %d parameters, device %s, "
                    "params %s", len(data.train), len(data.validation), trainable, report.total_parameters,
                    context.device, to_dict(params))
    live = _open_live(live_dir) if context.is_main else None
    reporter = reporter_from_environment()
    try:
        result = train(model, data, params, base.seed, context, live, checkpoint,
                       callbacks=[*([reporter] if reporter is not None else []), *callbacks])
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
    if not context.is_main:
        return {}
    if freeze.lora_r:
        merge_lora(model)  # the saved model is the plain architecture with the adapters folded in
    model.to("cpu")
    resolved = {"base": to_dict(base), "finetune": to_dict(params), "freeze": to_dict(freeze), "head": config["head"],
                "pooling": config.get("pooling")}
    sections = {"augment": augment}  # what a modality's training_sections may name
    resolved.update({name: to_dict(sections[name]) for name in modality.training_sections})
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging, modality.load_tokenizer(initial_dir),
                            extra={"max_length": params.max_length, "freeze": to_dict(freeze)})
        write_json(staging / "params.json", resolved)
        write_json(staging / "train_history.json", result.history)

    return {"best_epoch": result.best_epoch, **result.best_metrics}


def _start_weights(model: Any, freeze: Any, head_init: str, initial_dir: str, probe_dir: str | None,
                   seed: int) -> tuple[str, Any]:
    """Load the start weights ``finetune.head_init`` asks for into ``model`` and apply the freeze policy once
    (``requires_grad`` is not saved with the weights); returns the directory the weights came from and the
    policy's report. ``probe`` loads the probe's weights before the policy (LoRA adapters then wrap them);
    ``auto`` decides by the policy applied (only the head trains), with no adapters to wrap."""
    from crosstune.freezing.policy import apply_policy
    from crosstune.transfer_model.storage import load_model_weights

    if not model.new_head:  # a pretrained head (a recogniser's decoder): nothing for the probe to start
        if head_init == "probe":
            logger.warning("finetune.head_init: probe does not apply: this model's head is pretrained")
        return initial_dir, apply_policy(model, freeze, seed)
    if head_init == "probe":
        start_dir = _probe_dir(probe_dir, "probe")
        load_model_weights(model, start_dir)
        return start_dir, apply_policy(model, freeze, seed)
    report = apply_policy(model, freeze, seed)
    if head_init == "auto" and backbone_frozen_whole(model, freeze):
        start_dir = _probe_dir(probe_dir, "auto")
        load_model_weights(model, start_dir)
        return start_dir, report
    return initial_dir, report


def backbone_frozen_whole(model: Any, freeze: Any) -> bool:
    """Whether only the head trains: no backbone parameter left trainable by the policy, and no LoRA adapters."""
    return not freeze.lora_r and not any(parameter.requires_grad for parameter in model.backbone.parameters())


def _probe_dir(probe_dir: str | None, head_init: str) -> str:
    """The probe stage's model, which fine-tuning starts from with ``head_init`` probe (LP-FT) or auto (frozen
    whole)."""
    if probe_dir is None or not (Path(probe_dir) / "model.safetensors").is_file():
        why = "" if head_init == "probe" else " when every block of the backbone is frozen"
        raise ArtifactError(f"params.yaml: finetune.head_init: {head_init} starts from the probe stage's model{why}, "
                            f"but {f'{probe_dir} holds none' if probe_dir else 'no --probe directory was given'}; "
                            f"run `dvc repro probe` (or pass "
                            f"--probe models/probe), or set finetune.head_init: random.")
    logger.info("finetune: starting from the linear probe's fitted head (%s)%s", probe_dir,
                ": LP-FT" if head_init == "probe" else ": nothing in the backbone trains (finetune.head_init: auto)")
    return probe_dir


def _open_live(live_dir: str) -> Any:
    from dvclive import Live

    return Live(live_dir, dvcyaml=None, save_dvc_exp=False, report=None)
