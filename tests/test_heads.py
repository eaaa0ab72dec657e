"""crosstune.heads: every head and pooling gives finite outputs of the right shape; pooling ignores padding."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, token_batch

from crosstune.heads.registry import HEADS, POOLINGS, build_head


@pytest.mark.parametrize("head_type", HEADS.names())
@pytest.mark.parametrize("pooling", POOLINGS.names())
def test_every_head_and_pooling_gives_finite_outputs(head_type: str, pooling: str) -> None:
    model, tokenizer = tiny_model(head_type, pooling)
    input_ids, mask = token_batch(tokenizer)
    outputs = model(input_ids, mask)
    assert outputs.shape == (4, 3)
    assert torch.isfinite(outputs).all()


@pytest.mark.parametrize("head_type", HEADS.names())
def test_head_shapes(head_type: str) -> None:
    head = build_head(head_type, feature_dim=12, num_outputs=5, dropout=0.0, hidden_dim=7)
    assert head(torch.randn(3, 12)).shape == (3, 5)


def test_mean_pooling_ignores_padding() -> None:
    hidden = torch.randn(1, 4, 6)
    padded = hidden.clone()
    padded[:, 2:] = 100.0
    mask = torch.tensor([[1, 1, 0, 0]])
    mean = POOLINGS.get("mean")
    torch.testing.assert_close(mean(padded, mask), hidden[:, :2].mean(dim=1))
