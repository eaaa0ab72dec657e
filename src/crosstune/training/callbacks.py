"""Hooks into the training loop: code that must see every optimizer step or every epoch's validation
metrics without living in the loop (`crosstune tune`'s pruning reporter, a test's fault injection)."""

from __future__ import annotations


class TrainingCallback:
    """Subclass and override what you need; the loop calls every callback it was given, in order, on the main
    process only."""

    def on_step(self, step: int) -> None:
        """After optimizer step ``step`` (counted from 1 across epochs)."""

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """After epoch ``epoch`` (from 1) with its validation ``metrics``; may raise to stop the run."""
