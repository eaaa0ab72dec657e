"""Offline token-level text augmentation: random swap, random deletion and masking (Wei and Zou, EDA,
EMNLP 2019, https://arxiv.org/abs/1901.11196, without its synonym operations, plus BERT-style masking).

Why offline and on token ids: the copies are made once by the backbone stage, seeded, so every run with
the same params trains on the same rows (and the frozen-prefix cache stays valid); working on the
tokenizer's ids keeps special tokens ([CLS], [SEP]) in place and masks with the tokenizer's own mask token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from crosstune.data.text_encoding import EncodedSplit

if TYPE_CHECKING:
    from crosstune.config import TextAugmentParams


def augment_tokens(tokens: list[int], params: "TextAugmentParams", mask_id: int,
                   generator: torch.Generator) -> list[int]:
    """One augmented copy of the real tokens of a row (specials excluded): delete each with probability
    ``delete`` (at least one survives), swap ``round(swap * n)`` random pairs, then mask each with
    probability ``mask``."""
    def uniform(count: int) -> torch.Tensor:
        return torch.rand(count, generator=generator)

    if not tokens:
        return tokens
    kept = [token for token, draw in zip(tokens, uniform(len(tokens)).tolist()) if draw >= params.delete]
    if not kept:
        kept = [tokens[int(torch.randint(len(tokens), (1,), generator=generator))]]
    for _ in range(int(round(params.swap * len(kept)))):
        first, second = torch.randint(len(kept), (2,), generator=generator).tolist()
        kept[first], kept[second] = kept[second], kept[first]
    return [mask_id if draw < params.mask else token for token, draw in zip(kept, uniform(len(kept)).tolist())]


def augment_split(split: EncodedSplit, params: "TextAugmentParams", tokenizer: Any, seed: int) -> EncodedSplit:
    """``split`` followed by ``params.copies`` augmented copies of each of its rows (same labels).

    The first and last token of every row (the tokenizer's special tokens) stay where they are.
    """
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    if mask_id is None:
        raise ValueError("text_augment.mask needs a tokenizer with a mask or unknown token; set text_augment.mask: 0.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generator = torch.Generator().manual_seed(seed)
    rows: list[list[int]] = []
    labels = []
    for _ in range(params.copies):
        for index in range(len(split)):
            row = split.input_ids[index, : int(split.lengths[index])].tolist()
            inner = augment_tokens(row[1:-1], params, mask_id, generator) if len(row) > 2 else row[1:-1]
            rows.append(row[:1] + inner + row[-1:] if len(row) > 1 else row)
            labels.append(split.labels[index])
    if not rows:
        return split
    width = max(split.input_ids.shape[1], max(len(row) for row in rows))
    input_ids = torch.full((len(split) + len(rows), width), pad_id, dtype=split.input_ids.dtype)
    input_ids[: len(split), : split.input_ids.shape[1]] = split.input_ids
    for offset, row in enumerate(rows):
        input_ids[len(split) + offset, : len(row)] = torch.tensor(row, dtype=split.input_ids.dtype)
    lengths = torch.cat([split.lengths, torch.tensor([len(row) for row in rows], dtype=split.lengths.dtype)])
    return EncodedSplit(input_ids, lengths, torch.cat([split.labels, torch.stack(labels)]))
