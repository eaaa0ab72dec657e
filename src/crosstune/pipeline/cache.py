"""cache-frozen-prefix: the frozen bottom of the model run once over the train and validation splits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    AugmentParams,
    BaseParams,
    CacheParams,
    FinetuneParams,
    load_section,
)
from crosstune.io import atomic_directory, read_json, write_json

logger = logging.getLogger(__name__)


def cache_stage(initial_dir: str, encoded_dir: str, out_dir: str,
                params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """cache-frozen-prefix: run the frozen bottom of the model once over the train and validation splits.

    Writes ``out_dir/meta.json`` always (``cached: false`` and the reason when caching does not apply,
    decided without loading torch) and ``{split}.safetensors`` when it does.
    """
    from crosstune.data.prepared_dir import encoded_has_source
    from crosstune.prefix_cache.plan import (
        CACHED_SPLITS,
        META_NAME,
        plan_cache,
        plan_inputs,
    )
    from crosstune.transfer_model.settings import model_settings

    base, cache = load_section(BaseParams, params_path), load_section(CacheParams, params_path)
    finetune, augment = load_section(FinetuneParams, params_path), load_section(AugmentParams, params_path)

    config = model_settings(read_json(Path(initial_dir) / "config.json"))  # either config.json form (head.type: hf)
    has_source = encoded_has_source(encoded_dir)
    plan = plan_cache(config, cache, augment, finetune, has_source)
    meta: dict[str, Any] = {"cached": plan.cached, "inputs": plan_inputs(config, augment, finetune, has_source)}
    if not plan.cached:
        meta["reason"] = plan.reason
        logger.info("cache: not used (%s); finetune runs the whole model on every batch", plan.reason)
        with atomic_directory(out_dir) as staging:
            write_json(staging / META_NAME, meta)
        return meta

    import time

    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.prefix_cache.store import (
        build_cached_split,
        save_cached_split,
        verify_prefix_split,
    )
    from crosstune.runtime import setup
    from crosstune.transfer_model.storage import load_transfer_model

    device = setup(base)
    model, config = load_transfer_model(initial_dir)
    model.to(device)
    batching = batching_for(config, cache.batch_size, finetune.max_length)
    meta.update({"level": plan.level, "dtype": cache.dtype})
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
