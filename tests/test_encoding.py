"""Encoded splits: dynamic padding, truncation that keeps the separator, bucketed batches."""

from __future__ import annotations

import torch

from crosstune.data.text_encoding import EncodedSplit, iterate_batches


def split_of(lengths: list[int]) -> EncodedSplit:
    width = max(lengths)
    input_ids = torch.zeros((len(lengths), width), dtype=torch.int32)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.arange(1, length + 1, dtype=torch.int32) + 100 * row
        input_ids[row, length - 1] = 2  # the separator
    return EncodedSplit(input_ids, torch.tensor(lengths), torch.arange(len(lengths)))


def test_training_batches_cover_every_row_once_and_are_seeded() -> None:
    split = split_of([3 + (i * 7) % 20 for i in range(53)])
    first = [b.indices.tolist() for b in iterate_batches(split, 8, 64, torch.Generator().manual_seed(0))]
    second = [b.indices.tolist() for b in iterate_batches(split, 8, 64, torch.Generator().manual_seed(0))]
    assert first == second
    assert sorted(i for indices in first for i in indices) == list(range(53))


def test_dynamic_padding_and_mask() -> None:
    split = split_of([3, 5, 4])
    (batch,) = list(iterate_batches(split, 3, 64))
    assert batch.inputs["input_ids"].shape == (3, 5)
    assert batch.inputs["attention_mask"].sum(dim=1).tolist() == [5, 4, 3]
    assert batch.labels.tolist() == batch.indices.tolist()


def test_truncation_keeps_the_separator() -> None:
    split = split_of([10, 4])
    (batch,) = list(iterate_batches(split, 2, 6))
    row = batch.indices.tolist().index(0)
    assert batch.inputs["input_ids"].shape[1] == 6
    assert batch.inputs["input_ids"][row].tolist() == [1, 2, 3, 4, 5, 2]
    assert batch.inputs["attention_mask"][row].tolist() == [1] * 6
