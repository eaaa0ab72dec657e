"""crosstune.training.precision and attention_dropout: which autocast a run gets on which hardware, and the
attention-probability dropout rate that training sets."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import fit, load_splits, tiny_model, token_batch, write_params

from crosstune.config import FinetuneParams, load_section
from crosstune.errors import ConfigError
from crosstune.training import precision
from crosstune.training.attention_dropout import set_attention_dropout
from crosstune.training.precision import autocast, autocast_dtype


@pytest.fixture
def cpu_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Pretend the CPU has exactly the given flags (a fake /proc/cpuinfo), that oneDNN runs bf16 on it, and
    that its bf16 matmuls measured ``speedup`` times float32's speed."""
    def pretend(*flags: str, speedup: float = 4.2) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 {' '.join(flags)}\n\n")
        monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
        monkeypatch.setattr(precision, "onednn_runs_bf16", lambda: True)
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
        precision.cpu_flags.cache_clear()
        precision._cpu_dtype.cache_clear()

    yield pretend
    precision.cpu_flags.cache_clear()
    precision._cpu_dtype.cache_clear()


@pytest.mark.parametrize("flags", [("avx512f", "avx512_bf16"), ("avx512_bf16", "amx_tile", "amx_bf16"),
                                   ("avx2", "avx512f")])
def test_cpu_auto_is_float32_whatever_the_cpu_has(cpu_with, flags: tuple[str, ...],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The same params give the same precision, so the same test metrics, on every CPU (bf16 rounds differently
    with AMX tiles than with AVX512-BF16: bench/reproducibility); a CPU that could run bf16 says so."""
    cpu_with(*flags, speedup=4.2)
    with caplog.at_level("INFO", logger="crosstune.training.precision"):
        assert autocast_dtype("auto", "cpu") is None
    assert ("mixed_precision: bf16 trains faster" in caplog.text) == ("avx512_bf16" in flags)


def test_cpu_bf16_measured_slower_warns_and_names_off(cpu_with, caplog: pytest.LogCaptureFixture) -> None:
    cpu_with("avx512_bf16", speedup=0.58)
    with caplog.at_level("WARNING", logger="crosstune.training.precision"):
        assert autocast_dtype("bf16", "cpu") is torch.bfloat16
        assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert "0.58x" in caplog.text and "set it to off" in caplog.text
    assert caplog.text.count("0.58x") == 1  # one warning per run, however often the run asks
    caplog.clear()
    cpu_with("avx512_bf16", speedup=4.2)
    with caplog.at_level("WARNING", logger="crosstune.training.precision"):
        assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert not caplog.text
    cpu_with("avx2", speedup=0.0)  # no oneDNN bf16 kernels: bf16 asked for is emulated
    with caplog.at_level("WARNING", logger="crosstune.training.precision"):
        assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert "runs no bf16" in caplog.text and "set it to off" in caplog.text


def test_cpu_explicit_settings(cpu_with) -> None:
    cpu_with("avx2")
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16  # asked for: honoured without bf16 instructions
    assert autocast_dtype("fp16", "cpu") is None  # CPU fp16 autocast: float32 instead, with a warning
    cpu_with("avx512_bf16")
    assert autocast_dtype("off", "cpu") is None  # off pins float32 whatever the CPU has
    assert autocast_dtype("off", "cuda") is None


def test_missing_cpuinfo_means_no_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")
    precision.cpu_flags.cache_clear()
    precision._cpu_dtype.cache_clear()
    try:
        assert precision.cpu_flags() == frozenset()
        assert autocast_dtype("auto", "cpu") is None
    finally:
        precision.cpu_flags.cache_clear()
        precision._cpu_dtype.cache_clear()


def test_the_probe_measures_without_touching_the_seeded_generator() -> None:
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    precision.cpu_bf16_speedup.cache_clear()
    speedup = precision.cpu_bf16_speedup()
    assert torch.equal(torch.rand(4), expected)
    # a ratio of two timings of the same product, or 0.0 where oneDNN has no bf16 kernels to time
    assert 0.01 < speedup < 100 if precision.onednn_runs_bf16() else speedup == 0.0
    assert precision.cpu_bf16_speedup() == speedup  # measured once per process


def test_precision_names() -> None:
    assert [precision.precision_name(dtype) for dtype in (None, torch.bfloat16, torch.float16)] == \
        ["float32", "bfloat16", "float16"]


def test_autocast_runs_linear_layers_in_bf16() -> None:
    layer = torch.nn.Linear(4, 3)
    with autocast("cpu", torch.bfloat16):
        assert layer(torch.ones(2, 4)).dtype is torch.bfloat16
    with autocast("cpu", None):
        assert layer(torch.ones(2, 4)).dtype is torch.float32


def test_bf16_training_on_cpu_trains(attached: dict[str, Path]) -> None:
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=2, lr=1e-3,
                                 mixed_precision="bf16", select_metric="loss")
    float32 = dataclasses.replace(params, mixed_precision="off")
    results = {}
    for name, run_params in (("bf16", params), ("float32", float32)):
        from crosstune.freezing.policy import apply_freeze
        from crosstune.transfer_model.storage import load_transfer_model

        model, _ = load_transfer_model(attached["initial"])
        apply_freeze(model, 0)
        train_split, validation_split = load_splits(attached)
        results[name] = fit(model, train_split, validation_split, run_params)
        assert all(math.isfinite(value) for value in results[name].best_metrics.values())
        assert next(model.parameters()).dtype is torch.float32  # autocast leaves the weights in float32
    assert (results["bf16"].precision, results["float32"].precision) == ("bfloat16", "float32")
    # bf16 rounds every matmul: the runs are close, not equal (proof that autocast was on)
    assert results["bf16"].best_metrics["loss"] != results["float32"].best_metrics["loss"]
    assert abs(results["bf16"].best_metrics["loss"] - results["float32"].best_metrics["loss"]) < 0.1


@pytest.mark.parametrize(("setting", "expected"), [("bf16", "bfloat16"), ("auto", "float32")])
def test_finetune_stage_records_the_precision_it_ran(attached: dict[str, Path], cpu_with, setting: str,
                                                     expected: str) -> None:
    """A teammate whose run differs sees the precision each was made in: `dvc metrics show
    metrics/finetune/metrics.json` (and the rerun check) names it."""
    import json

    from crosstune.pipeline.finetune import finetune_stage

    cpu_with("avx512_bf16")
    write_params(attached["params"], {"finetune": {"mixed_precision": setting}})
    out = attached["initial"].parent
    finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(out / "finetuned"), str(out / "live"),
                   str(attached["params"]))
    assert json.loads((out / "live" / "metrics.json").read_text())["precision"] == expected


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
