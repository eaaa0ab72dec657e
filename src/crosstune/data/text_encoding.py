"""Token ids on disk and batches in memory.

The backbone stage tokenizes each split once (``{split}.safetensors``: padded ``input_ids``,
``lengths``, ``labels``); training and evaluation slice batches out of those tensors with
dynamic padding and length bucketing, so no stage after it tokenizes again and little time
goes into padding tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORED = -100  # a token the loss skips (PyTorch's cross-entropy ignore_index)
BUCKET_BATCHES = 50  # batches per length-sorted bucket: little padding, still well shuffled


@dataclass
class EncodedSplit:
    """One tokenized split.

    Shape:
        input_ids (N, L) int32, right-padded; lengths (N,) int64; labels (N,) int64 or float32, or for a
        per-token task (W, 2) int64: each word's tag and sentence, words in order
        (:mod:`crosstune.data.token_alignment`); positions (N, L) int64 for a per-token task: the word (row of
        ``labels``) whose first sub-token sits there and whose tag this row predicts, -1 elsewhere
    """

    input_ids: "torch.Tensor"
    lengths: "torch.Tensor"
    labels: "torch.Tensor"
    positions: "torch.Tensor | None" = None
    sentences: "list[Any] | None" = None  # new texts' tagged sentences (crosstune predict): not saved

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


@dataclass
class Batch:
    """A model-ready batch: ``inputs`` are the model's keyword arguments (``input_ids`` and
    ``attention_mask`` for text, ``pixel_values`` for images); ``indices`` are the rows' positions
    in the split, so outputs can be put back in order; a per-token task's ``positions`` (B, T) say which
    output row each token's prediction goes to (-1: none) and its ``labels`` are per token (-100: ignored)."""

    indices: "torch.Tensor"
    inputs: dict[str, "torch.Tensor"]
    labels: "torch.Tensor"
    positions: "torch.Tensor | None" = None

    def to(self, device: str) -> "Batch":
        return Batch(self.indices, {key: value.to(device) for key, value in self.inputs.items()},
                     self.labels.to(device), self.positions)


def output_rows(split: Any) -> int:
    """How many output rows a split has: one per example, or one per word for a per-token task."""
    return int(split.labels.shape[0])


def place_outputs(target: "torch.Tensor", batch: Batch, result: "torch.Tensor") -> None:
    """Write a batch's outputs into ``target`` (one row per output row): row i of ``result`` to
    ``batch.indices[i]``, or each token at ``batch.positions`` (B, T) >= 0 to that row."""
    if batch.positions is None:
        target[batch.indices] = result.to(target.device, target.dtype)
        return
    mask = batch.positions >= 0
    target[batch.positions[mask]] = result[mask.to(result.device)].to(target.dtype).cpu()


def token_labels(labels: "torch.Tensor", positions: "torch.Tensor") -> "torch.Tensor":
    """Per-token training targets from a per-token split's word labels (W, 2) and a batch's positions (B, T):
    the word's tag at its first sub-token, -100 (ignored by the loss) everywhere else."""
    import torch

    tags = labels[:, 0][positions.clamp(min=0)]
    return torch.where(positions >= 0, tags, torch.full_like(tags, IGNORED))


def encode_texts(
    tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str], labels: "torch.Tensor", max_length: int
) -> EncodedSplit:
    """Tokenize ``texts`` (truncating at ``max_length`` tokens) into one padded tensor."""
    import torch

    if not texts:
        return EncodedSplit(torch.zeros((0, 1), dtype=torch.int32), torch.zeros(0, dtype=torch.int64), labels)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    rows = encoded["input_ids"]
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), int(lengths.max()) if rows else 1), pad_id, dtype=torch.int32)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.int32)
    return EncodedSplit(input_ids, lengths, labels)


def save_split(split: EncodedSplit, path: str | Path) -> None:
    """Write a split as safetensors (no pickle)."""
    from safetensors.torch import save_file

    tensors = {"input_ids": split.input_ids, "lengths": split.lengths, "labels": split.labels}
    if split.positions is not None:
        tensors["positions"] = split.positions
    save_file(tensors, str(path))


def load_split(path: str | Path) -> EncodedSplit:
    """Read a split written by :func:`save_split`."""
    from crosstune.io import load_tensors

    return split_from_tensors(load_tensors(path), path)


def split_from_tensors(tensors: dict[str, "torch.Tensor"], path: str | Path) -> EncodedSplit:
    """An :class:`EncodedSplit` from a file's tensors; a file missing one is an :class:`ArtifactError`."""
    from crosstune.errors import ArtifactError
    from crosstune.io import artifact_fix

    missing = sorted({"input_ids", "lengths", "labels"} - set(tensors))
    if missing:
        raise ArtifactError(f"{path}: has no {missing} tensors, so it is not an encoded split; {artifact_fix(path)}")
    return EncodedSplit(tensors["input_ids"], tensors["lengths"], tensors["labels"], tensors.get("positions"))


def _collate(split: EncodedSplit, indices: "torch.Tensor", max_length: int) -> Batch:
    """Pad to the longest row in the batch; rows longer than ``max_length`` keep their last token
    (the separator) so truncation at training time looks like truncation at tokenization time."""
    import torch

    lengths = split.lengths[indices]
    width = int(min(int(lengths.max()), max_length))
    input_ids = split.input_ids[indices, :width].long()
    cut = lengths > width
    if cut.any():
        last_tokens = split.input_ids[indices[cut], lengths[cut] - 1].long()
        input_ids[cut, width - 1] = last_tokens
    attention_mask = (torch.arange(width).unsqueeze(0) < lengths.clamp(max=width).unsqueeze(1)).long()
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if split.positions is None:
        return Batch(indices, inputs, split.labels[indices])
    if cut.any():
        from crosstune.errors import ConfigError

        raise ConfigError(f"params.yaml: finetune.max_length: {max_length} is shorter than the tagged windows the "
                          f"backbone stage cut ({int(lengths.max())} tokens, backbone.max_length), so words would "
                          f"lose their tags; set finetune.max_length >= backbone.max_length.")
    positions = split.positions[indices, :width]
    return Batch(indices, inputs, token_labels(split.labels, positions), positions)


def num_batches(size: int, batch_size: int) -> int:
    """Batches per epoch (the last one may be smaller)."""
    return math.ceil(size / batch_size)


def batch_indices(lengths: "torch.Tensor", batch_size: int,
                  generator: "torch.Generator | None" = None) -> Iterator["torch.Tensor"]:
    """Row indices of each batch, in the order they are served.

    With a ``generator`` (training): shuffle, cut into buckets of ``BUCKET_BATCHES`` batches, sort each
    bucket by length, then shuffle the batch order, all from the seeded generator. Without one
    (evaluation): sorted by length; callers put predictions back in place through ``Batch.indices``.
    The cached path (:mod:`crosstune.prefix_cache.store`) serves the same batches from the same lengths.
    """
    import torch

    size = int(lengths.shape[0])
    if generator is None:
        order = torch.argsort(lengths, descending=True, stable=True)
        for start in range(0, size, batch_size):
            yield order[start : start + batch_size]
        return
    order = torch.randperm(size, generator=generator)
    batches = []
    bucket = batch_size * BUCKET_BATCHES
    for start in range(0, size, bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
        batches.extend(chunk[offset : offset + batch_size] for offset in range(0, len(chunk), batch_size))
    for position in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[position]


def iterate_batches(
    split: EncodedSplit, batch_size: int, max_length: int, generator: "torch.Generator | None" = None
) -> Iterator[Batch]:
    """Yield length-bucketed, dynamically padded batches (order: :func:`batch_indices`)."""
    for indices in batch_indices(split.lengths, batch_size, generator):
        yield _collate(split, indices, max_length)
