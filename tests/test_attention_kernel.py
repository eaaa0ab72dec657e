"""crosstune.training.attention_kernel and the fused optimisers: the kernel choices of a CPU training step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import fit, load_splits

from crosstune.config import FinetuneParams, load_section
from crosstune.training.attention_kernel import (
    MATH_MAX_TOKENS,
    attention_kernel,
    uses_math_kernel,
)
from crosstune.training.optimization import OPTIMIZERS


def _text(width: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.ones(2, width, dtype=torch.long), "attention_mask": torch.ones(2, width)}


@pytest.mark.parametrize(("device", "dtype", "inputs", "expected"), [
    ("cpu", torch.bfloat16, _text(MATH_MAX_TOKENS), True),
    ("cpu", torch.bfloat16, _text(MATH_MAX_TOKENS + 1), False),  # long: the fused kernel is faster
    ("cpu", None, _text(64), False),  # float32: the fused kernel is faster at every width
    ("cpu", torch.float16, _text(64), False),
    ("cuda", torch.bfloat16, _text(64), False),
    ("cpu", torch.bfloat16, {"hidden_states": torch.ones(2, 64, 8), "attention_mask": torch.ones(2, 64)}, True),
    ("cpu", torch.bfloat16, {"pixel_values": torch.ones(2, 3, 8, 8)}, False),
    ("cpu", torch.bfloat16, {"input_values": torch.ones(2, 64), "attention_mask": torch.ones(2, 64)}, False),
])
def test_math_kernel_only_for_short_bf16_text_batches_on_a_cpu(device: str, dtype, inputs, expected: bool) -> None:
    assert uses_math_kernel(device, dtype, inputs) is expected


def test_the_context_turns_the_fused_kernel_off_only_when_every_batch_qualifies() -> None:
    assert torch.backends.cuda.flash_sdp_enabled()
    with attention_kernel("cpu", torch.bfloat16, _text(32)):
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()
    with attention_kernel("cpu", torch.bfloat16, _text(32), _text(MATH_MAX_TOKENS + 1)):  # a long target batch
        assert torch.backends.cuda.flash_sdp_enabled()


def test_bf16_training_steps_run_the_math_kernel_and_validation_keeps_the_fused_one(
        attached: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from crosstune.freezing.policy import apply_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    calls: list[tuple[bool, bool]] = []  # (grad enabled: a training step, fused kernel allowed)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((torch.is_grad_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=1, mixed_precision="bf16")
    model, _ = load_transfer_model(attached["initial"])
    apply_freeze(model, 0)
    fit(model, *load_splits(attached), params)
    training = {allowed for grad, allowed in calls if grad}
    validation = {allowed for grad, allowed in calls if not grad}
    assert training == {False} and validation == {True}


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_optimisers_are_fused_on_a_cpu(name: str, attached: dict[str, Path]) -> None:
    params = load_section(FinetuneParams, attached["params"])
    parameters = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    optimizer = OPTIMIZERS.get(name)([{"params": parameters}], params)
    assert optimizer.defaults["fused"] is True
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    assert all(bool((parameter < 0).all()) for parameter in parameters)  # it stepped against the gradient
