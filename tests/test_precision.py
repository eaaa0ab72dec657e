"""crosstune.training.precision and attention_dropout: which autocast a run gets on which hardware, and the
attention-probability dropout rate that training sets."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import load_splits, tiny_model, token_batch

from crosstune.config import FinetuneParams, load_section
from crosstune.errors import ConfigError
from crosstune.training import precision
from crosstune.training.attention_dropout import set_attention_dropout
from crosstune.training.loop import train
from crosstune.training.precision import autocast, autocast_dtype


@pytest.fixture
def cpu_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Pretend the CPU has exactly the given flags (a fake /proc/cpuinfo)."""
    def pretend(*flags: str) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 {' '.join(flags)}\n\n")
        monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
        precision.cpu_flags.cache_clear()

    yield pretend
    precision.cpu_flags.cache_clear()


def test_cpu_auto_is_float32_whatever_the_cpu(cpu_with) -> None:
    cpu_with("avx512f", "avx512_bf16")  # bf16 instructions, but no matrix tiles: float32 is faster
    assert autocast_dtype("auto", "cpu") is None
    cpu_with("avx512_bf16", "amx_tile", "amx_bf16")  # tiles: faster, but other CPUs would round differently
    assert autocast_dtype("auto", "cpu") is None
    assert precision.cpu_runs_bf16_fast() == torch.backends.mkldnn.is_available()


def test_cpu_bf16_without_amx_warns(cpu_with, caplog: pytest.LogCaptureFixture) -> None:
    cpu_with("avx512_bf16")
    with caplog.at_level("WARNING", logger="crosstune.training.precision"):
        assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert "without AMX" in caplog.text


def test_cpu_explicit_settings(cpu_with) -> None:
    cpu_with("avx2")
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16  # asked for: honoured even where slower
    assert autocast_dtype("fp16", "cpu") is None  # CPU fp16 autocast: float32 instead, with a warning
    assert autocast_dtype("off", "cpu") is None
    assert autocast_dtype("off", "cuda") is None


def test_missing_cpuinfo_means_no_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")
    precision.cpu_flags.cache_clear()
    try:
        assert precision.cpu_flags() == frozenset()
        assert autocast_dtype("auto", "cpu") is None
    finally:
        precision.cpu_flags.cache_clear()


def test_autocast_runs_linear_layers_in_bf16() -> None:
    layer = torch.nn.Linear(4, 3)
    with autocast("cpu", torch.bfloat16):
        assert layer(torch.ones(2, 4)).dtype is torch.bfloat16
    with autocast("cpu", None):
        assert layer(torch.ones(2, 4)).dtype is torch.float32


def test_bf16_training_on_cpu_trains(attached: dict[str, Path]) -> None:
    params = dataclasses.replace(load_section("finetune", attached["params"]), epochs=2, lr=1e-3,
                                 mixed_precision="bf16", select_metric="loss")
    float32 = dataclasses.replace(params, mixed_precision="off")
    results = {}
    for name, run_params in (("bf16", params), ("float32", float32)):
        from crosstune.freezing.policy import apply_freeze
        from crosstune.model.transfer_model import load_transfer_model

        model, _ = load_transfer_model(attached["initial"])
        apply_freeze(model, 0)
        train_split, validation_split = load_splits(attached)
        results[name] = train(model, train_split, validation_split, run_params, seed=0, device="cpu")
        assert all(math.isfinite(value) for value in results[name].best_metrics.values())
        assert next(model.parameters()).dtype is torch.float32  # autocast leaves the weights in float32
    # bf16 rounds every matmul: the runs are close, not equal (proof that autocast was on)
    assert results["bf16"].best_metrics["loss"] != results["float32"].best_metrics["loss"]
    assert abs(results["bf16"].best_metrics["loss"] - results["float32"].best_metrics["loss"]) < 0.1


def _train_mode_outputs(model: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    model.train()
    torch.manual_seed(0)
    return model(*inputs)


def test_attention_dropout_rate_takes_effect() -> None:
    model, tokenizer = tiny_model()
    for module in model.modules():  # every other dropout off: only the attention's can make train != eval
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = token_batch(tokenizer)
    model.eval()
    with torch.no_grad():
        reference = model(*inputs)
        assert set_attention_dropout(model, 0.5) == 3  # one per block of the 3-block tiny-bert
        assert not torch.allclose(_train_mode_outputs(model, inputs), reference)
        assert set_attention_dropout(model, 0.0) == 3
        torch.testing.assert_close(_train_mode_outputs(model, inputs), reference)


def test_attention_dropout_leaves_models_without_attention_alone() -> None:
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.2))
    assert set_attention_dropout(cnn, 0.0) == 0
    assert cnn[1].p == 0.2


def test_attention_dropout_param_is_checked() -> None:
    assert FinetuneParams().attention_dropout == 0.0
    assert FinetuneParams(attention_dropout="backbone").attention_dropout == "backbone"
    assert FinetuneParams(attention_dropout=0.0).attention_dropout == 0.0
    with pytest.raises(ConfigError, match="finetune.attention_dropout"):
        FinetuneParams(attention_dropout=1.0)
    with pytest.raises(ConfigError, match="finetune.attention_dropout"):
        FinetuneParams(attention_dropout="none")
