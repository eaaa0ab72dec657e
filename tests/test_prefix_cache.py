"""crosstune.prefix_cache: when the frozen prefix is cached, and that training on it matches training without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import fit, write_audio_folder, write_image_folder, write_params

from crosstune.config import AugmentParams, CacheParams, FinetuneParams
from crosstune.prefix_cache.plan import plan_cache
from crosstune.prefix_cache.store import (
    CachedBatching,
    build_cached_split,
    load_cached_split,
    save_cached_split,
)


def _finetune(epochs: int = 2) -> FinetuneParams:
    # float32: the cache holds the prefix's float32 outputs, while an uncached bf16 run (auto, on a CPU that runs
    # bf16 fast) rounds the prefix too; equal runs are a float32 promise
    return FinetuneParams(lr=0.003, epochs=epochs, batch_size=8, max_length=32, class_weights="balanced",
                          warmup_ratio=0.1, log_every=2, mixed_precision="off")


def _train_both(initial: Path, encoded: Path, depth: object, tmp_path: Path, dtype: str = "float32"):
    """Train the attached model twice from the same seed, uncached and on the cache; return both models."""
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.freezing.policy import apply_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    params = _finetune()
    results = []
    for use_cache in (False, True):
        model, config = load_transfer_model(initial)
        apply_freeze(model, depth)
        config["freeze"] = {"depth": depth}
        train_split = load_any_split(encoded / "train.safetensors")
        validation_split = load_any_split(encoded / "validation.safetensors")
        batching = batching_for(config, params.batch_size, params.max_length)
        level = None
        if use_cache:
            plan = plan_cache(config, CacheParams(dtype=dtype), AugmentParams(), params)
            assert plan.cached, plan.reason
            cached = []
            for name, split in (("train", train_split), ("validation", validation_split)):
                path = tmp_path / f"{name}-{depth}.safetensors"
                save_cached_split(build_cached_split(model, plan.level, split, batching, 16, dtype, "cpu"), path)
                cached.append(load_cached_split(path))
            train_split, validation_split = cached
            batching, level = CachedBatching(params.batch_size, model.modality), plan.level
        result = fit(model, train_split, validation_split, params, 7, batching=batching, level=level)
        results.append((model, result))
    return results


@pytest.mark.parametrize("depth", [1, "all"])
def test_cached_text_training_matches_uncached(attached: dict[str, Path], tmp_path: Path, depth: object) -> None:
    (plain, plain_result), (cached, cached_result) = _train_both(attached["initial"], attached["encoded"], depth,
                                                                 tmp_path)
    for (name, expected), actual in zip(plain.state_dict().items(), cached.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4, msg=name)
    assert plain_result.best_epoch == cached_result.best_epoch
    assert plain_result.best_metrics["f1_macro"] == pytest.approx(cached_result.best_metrics["f1_macro"], abs=1e-6)


@pytest.mark.parametrize(("write_folder", "backbone"), [(write_image_folder, "tiny-cnn"),
                                                      (write_audio_folder, "tiny-audio-cnn")])
def test_cached_image_and_audio_training_matches_uncached(tmp_path: Path, write_folder: Any, backbone: str) -> None:
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    write_folder(tmp_path / "inputs" / "train", 12, seed=1)
    write_folder(tmp_path / "inputs" / "test", 4, seed=2)
    params = write_params(tmp_path / "params.yaml", {"backbone": {"name": backbone, "weights": "none"},
                                                     "evaluate": {"baselines": ["majority"]}})
    prepare_stage(str(tmp_path / "inputs" / "train"), str(tmp_path / "inputs" / "test"), str(tmp_path / "prepared"),
                  str(params))
    backbone_stage(str(tmp_path / "prepared"), str(tmp_path / "backbone"), str(tmp_path / "encoded"),
                   str(tmp_path / "b.json"), str(tmp_path / "s.json"), str(tmp_path / "s.csv"), str(params))
    attach_head_stage(str(tmp_path / "backbone"), str(tmp_path / "prepared"), str(tmp_path / "initial"),
                      str(tmp_path / "f.json"), str(params))
    (plain, _), (cached, _) = _train_both(tmp_path / "initial", tmp_path / "encoded", 2, tmp_path)
    for (name, expected), actual in zip(plain.state_dict().items(), cached.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4, msg=name)


def test_half_precision_cache_stays_close(attached: dict[str, Path], tmp_path: Path) -> None:
    (plain, _), (cached, _) = _train_both(attached["initial"], attached["encoded"], 1, tmp_path, dtype="float16")
    head_plain, head_cached = plain.head.state_dict(), cached.head.state_dict()
    for name in head_plain:
        torch.testing.assert_close(head_cached[name], head_plain[name], atol=5e-3, rtol=5e-2)


def test_cache_batches_follow_the_uncached_order(attached: dict[str, Path]) -> None:
    from crosstune.data.batching import TextBatching, load_any_split
    from crosstune.transfer_model.storage import load_transfer_model

    model, _ = load_transfer_model(attached["initial"])
    split = load_any_split(attached["encoded"] / "train.safetensors")
    cached = build_cached_split(model, 1, split, TextBatching(8, 32), 16, "float32", "cpu")
    plain_order = [batch.indices.tolist() for batch in TextBatching(8, 32).train(split, torch.Generator().manual_seed(3))]
    cached_order = [batch.indices.tolist() for batch in CachedBatching(8, "text").train(cached, torch.Generator().manual_seed(3))]
    assert plain_order == cached_order


@pytest.mark.parametrize("config, augment, finetune, cache, expected", [
    ({"freeze": {"depth": 0}}, AugmentParams(), FinetuneParams(), CacheParams(), "freeze.depth is 0"),
    ({"freeze": {"depth": 2}}, AugmentParams(), FinetuneParams(), CacheParams(enabled=False), "cache.enabled"),
    ({"modality": "image", "freeze": {"depth": 2}, "backbone": {"num_blocks": 3}}, AugmentParams(horizontal_flip=0.5),
     FinetuneParams(), CacheParams(), "augment"),
    ({"modality": "image", "freeze": {"depth": 1, "train_batchnorm": True}, "backbone": {"num_blocks": 3}},
     AugmentParams(), FinetuneParams(), CacheParams(), "BatchNorm"),
])
def test_cache_falls_back_when_invalid(config: dict, augment: AugmentParams, finetune: FinetuneParams,
                                       cache: CacheParams, expected: str) -> None:
    plan = plan_cache(config, cache, augment, finetune)
    assert not plan.cached and expected in plan.reason


def test_cache_levels() -> None:
    text = {"modality": "text", "backbone_config": {"num_hidden_layers": 6}}
    assert plan_cache({**text, "freeze": {"depth": 3}}, CacheParams(), AugmentParams(), FinetuneParams()).level == 3
    assert plan_cache({**text, "freeze": {"depth": 6}}, CacheParams(), AugmentParams(), FinetuneParams()).level == "all"
    assert plan_cache({**text, "freeze": {"depth": "all"}}, CacheParams(), AugmentParams(),
                      FinetuneParams()).level == "all"


def test_gpu_benchmark_runs_in_cpu_smoke_mode(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO_ROOT

    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"full_finetuning", "half_frozen_cached"}
    assert all(run["samples_per_second"] > 0 and run["model_tflops_per_second"] > 0 for run in runs.values())
    assert runs["half_frozen_cached"]["frozen_blocks"] == 1 and runs["full_finetuning"]["mfu"] is None


def test_cache_plan_refuses_adaptation_and_source_training() -> None:
    from crosstune.config import AugmentParams, CacheParams, FinetuneParams
    from crosstune.prefix_cache.plan import plan_cache

    config = {"modality": "text", "freeze": {"depth": 1}, "backbone_config": {"num_hidden_layers": 2}}
    plain = plan_cache(config, CacheParams(), AugmentParams(), FinetuneParams())
    assert plain.cached
    adapting = plan_cache(config, CacheParams(), AugmentParams(), FinetuneParams(adaptation="coral"))
    assert not adapting.cached and "finetune.adaptation: coral" in adapting.reason
    with_source = plan_cache(config, CacheParams(), AugmentParams(), FinetuneParams(), has_source=True)
    assert not with_source.cached and "source domain" in with_source.reason
