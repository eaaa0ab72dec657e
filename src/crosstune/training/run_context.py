"""Where and how a training run computes, worked out once per stage: the device, the autocast precision and
the data-parallel rank. The finetune stage hands the same :class:`RunContext` to the checkpoint's fingerprint
(a checkpoint resumes only in the precision and world size it was made in) and to the training loop, so the
choice is made, probed and logged once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from crosstune.config import BaseParams, FinetuneParams
    from crosstune.training.distributed import Distributed


@dataclass(frozen=True)
class RunContext:
    """The device, the autocast dtype (None: float32) and this process's place in a data-parallel run (None:
    a single process)."""

    device: str
    amp_dtype: "torch.dtype | None" = None
    distributed: "Distributed | None" = None

    @classmethod
    def single_process(cls, device: str = "cpu", mixed_precision: str = "auto") -> "RunContext":
        """One process on ``device`` at the precision ``finetune.mixed_precision`` gives there: a notebook's,
        a benchmark's or a test's run (the stages build theirs with :func:`training_context`)."""
        from crosstune.training.precision import autocast_dtype

        return cls(device, autocast_dtype(mixed_precision, device))

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs and logs (rank 0, or the only process)."""
        return self.distributed is None or self.distributed.is_main

    @property
    def world_size(self) -> int:
        return self.distributed.world_size if self.distributed is not None else 1

    @property
    def precision(self) -> str:
        """``float32``, ``bfloat16`` or ``float16``: what the run's matrix products use."""
        from crosstune.training.precision import precision_name

        return precision_name(self.amp_dtype)

    def fingerprint_settings(self) -> dict[str, Any]:
        """What a resumable checkpoint must share with this run beyond params and data (``finetune.mixed_precision:
        auto``'s CPU choice is this machine's: a checkpoint made in one precision resumes in it only)."""
        return {"world_size": self.world_size, "precision": self.precision}


def training_context(base: "BaseParams", finetune: "FinetuneParams") -> RunContext:
    """Seed, threads and device (:func:`crosstune.runtime.setup`), the data-parallel process group when under
    torchrun, and the autocast dtype ``finetune.mixed_precision`` gives there."""
    from crosstune.runtime import setup
    from crosstune.training.distributed import init_distributed
    from crosstune.training.precision import autocast_dtype

    device = setup(base)
    distributed = init_distributed(device)
    if distributed is not None:
        device = distributed.device
    return RunContext(device, autocast_dtype(finetune.mixed_precision, device), distributed)
