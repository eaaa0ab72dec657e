"""Data-parallel fine-tuning on an existing engine: torchrun starts the processes, DDP syncs gradients.

``finetune.num_processes: N`` (> 1; 0 = one per visible GPU) makes the finetune stage start itself again under
``python -m torch.distributed.run --standalone --nproc_per_node N`` (gloo on CPU, nccl on GPUs, one GPU
per process). Every process runs the same training code on the same seeded batch order and takes
rows ``rank::N`` of each batch, so the global batch, the number of steps and the schedule stay those
of a single process and the result stays within noise of it. Only rank 0 logs and writes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

    from crosstune.data.text_encoding import Batch

logger = logging.getLogger(__name__)


def in_distributed_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_num_processes(setting: int) -> int:
    """``finetune.num_processes``: 0 means one process per visible GPU (one process without a GPU)."""
    if setting != 0:
        return setting
    import torch

    return max(torch.cuda.device_count(), 1)


def relaunch(script: str, argv: Sequence[str], num_processes: int) -> int:
    """Run ``script argv`` under torchrun with ``num_processes`` processes; returns its exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
               script, *argv]
    logger.info("finetune: %d data-parallel processes: %s", num_processes, " ".join(command))
    return subprocess.call(command)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: "Batch") -> "Batch":
        """Rows ``rank::world_size`` of ``batch`` (the whole batch when it has fewer rows than processes)."""
        from crosstune.data.text_encoding import Batch

        if len(batch.indices) < self.world_size:
            return batch
        rows = slice(self.rank, None, self.world_size)
        return Batch(batch.indices[rows], {key: value[rows] for key, value in batch.inputs.items()},
                     batch.labels[rows])

    def wrap(self, module: "torch.nn.Module") -> "torch.nn.Module":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [int(self.device.split(":")[1])] if self.device.startswith("cuda") else None
        return DistributedDataParallel(module, device_ids=device_ids)


def init_distributed(device: str) -> Distributed | None:
    """Join the process group torchrun set up (None outside a multi-process launch)."""
    if not in_distributed_launch():
        return None
    import torch
    import torch.distributed as dist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))
    logger.info("data-parallel process %d of %d on %s", rank, world_size, device)
    return Distributed(rank, world_size, device)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def relaunched_under_torchrun(script: str, argv: Sequence[str], num_processes_setting: int) -> bool:
    """Start ``script argv`` again under torchrun when ``finetune.num_processes`` asks for several processes
    and this one is not one of them yet; True when it did (the caller then has nothing left to do). A failed
    data-parallel run's exit status becomes this process's."""
    processes = resolve_num_processes(num_processes_setting)
    if processes <= 1 or in_distributed_launch():
        return False
    status = relaunch(script, argv, processes)
    if status:
        raise SystemExit(status)
    return True
