"""Training with a labelled source domain: each optimizer step sees one source batch and one target batch.

Why two streams rather than one mixed split: the adaptation losses compare a batch of source features
with a batch of target features, and text batches of the two domains are padded to different lengths.
An epoch is one pass over the larger domain; the other stream is reshuffled and restarted when it runs
out. The target stream is left out (``target`` None) when nothing would use it: no adaptation loss and
no labelled target row, i.e. plain source-only training; the epoch keeps its length then (the source
stream cycles), so source-only and adaptation runs take the same number of optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from crosstune.data.text_encoding import Batch, num_batches

if TYPE_CHECKING:
    import torch


@dataclass
class DomainStreams:
    """(source batch, target batch or None) pairs for one epoch, seeded by the training generator."""

    source: Any
    target: Any | None
    batching: Any
    batch_size: int
    target_size: int  # rows in the target training split, used or not

    @property
    def batches_per_epoch(self) -> int:
        return max(num_batches(len(self.source), self.batch_size), num_batches(self.target_size, self.batch_size))

    def epoch(self, generator: "torch.Generator") -> Iterator[tuple[Batch, Batch | None]]:
        source = self._cycle(self.source, generator)
        target = self._cycle(self.target, generator) if self.target is not None else None
        for _ in range(self.batches_per_epoch):
            yield next(source), next(target) if target is not None else None

    def _cycle(self, split: Any, generator: "torch.Generator") -> Iterator[Batch]:
        while True:
            yield from self.batching.train(split, generator)


def labelled_count(split: Any) -> int:
    """Target rows with a label (classification labels >= 0; -1 marks the unlabelled pool)."""
    return int((split.labels >= 0).sum())


def build_streams(source: Any, target: Any, batching: Any, batch_size: int, adapting: bool) -> DomainStreams:
    """The two streams, keeping the target one only when the adaptation loss or its labels need it."""
    uses_target = adapting or labelled_count(target) > 0
    return DomainStreams(source, target if uses_target else None, batching, batch_size, len(target))
