"""Mixed precision: which autocast dtype a run uses, by ``finetune.mixed_precision`` and the device.

On a GPU ``auto`` is bf16 (fp16 with a grad scaler where bf16 is missing). On a CPU ``auto`` is float32,
whatever the CPU: bf16 rounds every matmul, so a precision picked by CPU flags would give a teammate whose
CPU differs other metrics from the same params and the same dvc.lock. ``bf16`` asks for it explicitly. It
pays only where the matrix units run bf16 natively, Intel AMX tiles (``amx_bf16`` in ``/proc/cpuinfo``):
with only AVX512-BF16 oneDNN's bf16 matmul ran at half the speed of MKL's float32 one and fine-tuning took
1.32x as long (bench/speed/precision.json); on an AMX CPU see bench/speed/precision_amx.json.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import ContextManager

import torch

logger = logging.getLogger(__name__)
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_runs_bf16_fast() -> bool:
    """True where the CPU has AMX bf16 tiles and torch's oneDNN can use bf16 at all."""
    return "amx_bf16" in cpu_flags() and bool(torch.backends.mkldnn.is_available())


def autocast_dtype(setting: str, device: str) -> torch.dtype | None:
    """The autocast dtype for ``finetune.mixed_precision`` on ``device`` (None = float32).

    GPU: ``auto`` = bf16, or fp16 where bf16 is unsupported. CPU: ``auto`` = float32 (reproducible across
    CPUs), ``bf16`` = bf16 (a warning where the CPU lacks AMX, where it is slower); ``fp16`` falls back to
    float32 (CPU fp16 autocast is slower than float32).
    """
    if setting == "off":
        return None
    if device.startswith("cuda"):
        if setting == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if setting == "bf16" else torch.float16
    if setting == "fp16":
        logger.warning("finetune.mixed_precision: fp16 is for GPUs; training in float32 on %s (bf16 runs on CPUs)",
                       device)
        return None
    if setting == "bf16":
        if not cpu_runs_bf16_fast():
            logger.warning("finetune.mixed_precision: bf16 on a CPU without AMX tiles (no amx_bf16 in %s) is "
                           "slower than float32 (bench/speed/precision.json); set it to auto for float32", CPUINFO)
        return torch.bfloat16
    if cpu_runs_bf16_fast():
        logger.info("this CPU has AMX bf16 tiles: finetune.mixed_precision: bf16 may train faster here "
                    "(bench/speed/precision_amx.json); auto keeps float32 so other CPUs reproduce the metrics")
    return None


def autocast(device: str, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` for ``device``'s type at ``dtype``; a no-op context with None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
