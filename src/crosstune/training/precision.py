"""Mixed precision: which autocast dtype a run uses, by ``finetune.mixed_precision`` and the device.

On a GPU ``auto`` is bf16 (fp16 with a grad scaler where bf16 is missing). On a CPU ``auto`` is bf16 where
the CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``, and torch's oneDNN runs
bf16), float32 elsewhere. Autocast (https://pytorch.org/docs/stable/amp.html) runs matmuls in bf16,
y = bf16(x) bf16(W) accumulated in float32, and keeps weights, optimizer and reductions (softmax, layer norm,
loss) in float32. Measured on the text default (3 seeds, bench/speed/precision_epyc.json): fine-tuning 1.83x
faster on an AMD EPYC, test macro-F1 0.5525 +/- 0.017 against float32's 0.5568 +/- 0.022 (within seed noise).

Why instructions and not a timing: the rule must give a teammate the same precision, so the same metrics,
from the same params. Autocast's bf16 runs reproduced to the last digit across CPUs (seed 42: macro-F1
0.568805 on an Intel AVX512-BF16 CPU and on the AMD EPYC), as float32 runs do; a timed rule would flip where
a CPU's bf16 is slow. It is slow on one CPU measured: an Intel without AMX multiplied bf16 matrices at 0.58x
float32's rate and fine-tuned 1.32x slower (bench/speed/precision.json), against 4.2x and 1.83x faster on the
EPYC and 3.6x on an AMX CPU (precision_amx.json). So the rule's speed is measured too (:func:`cpu_bf16_speedup`)
and a warning names ``off`` where bf16 is the slower choice. The finetune metrics record the precision that
ran (``precision``); ``off`` pins float32 on every machine.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from pathlib import Path
from typing import ContextManager

import torch

logger = logging.getLogger(__name__)
CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (AVX512-BF16) or matrix tiles (AMX)
PROBE_SHAPE = (2048, 384, 1536)  # 16 x 128 tokens through a MiniLM-L6 block's feed-forward layer
PROBE_ROUNDS = 5


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


def onednn_runs_bf16() -> bool:
    """True where torch's oneDNN backend is built in and runs bf16 on this CPU."""
    return bool(torch.backends.mkldnn.is_available()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_bf16() -> bool:
    """True where the CPU has bf16 instructions and torch's oneDNN runs bf16 on it."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS) and onednn_runs_bf16()


@functools.cache
def cpu_bf16_speedup() -> float:
    """float32's time over bf16's for the same matrix product on this CPU, for the log and warnings only
    (0.0 where oneDNN runs no bf16 here).

    Best of ``PROBE_ROUNDS`` alternating rounds, so a busy moment slows both dtypes rather than one; about
    30 ms. Its own generator: the global RNG, which seeds the run, is untouched.
    """
    if not onednn_runs_bf16():
        return 0.0  # torch's fallback bf16 kernels: far slower than float32, and too slow to time here
    rows, inner, columns = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(rows, inner, generator=generator), torch.randn(inner, columns, generator=generator)
    operands = {torch.float32: (left, right), torch.bfloat16: (left.bfloat16(), right.bfloat16())}
    best = dict.fromkeys(operands, math.inf)
    for _ in range(PROBE_ROUNDS):
        for dtype, (a, b) in operands.items():
            started = time.perf_counter()
            torch.mm(a, b)
            best[dtype] = min(best[dtype], time.perf_counter() - started)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def autocast_dtype(setting: str, device: str) -> torch.dtype | None:
    """The autocast dtype for ``finetune.mixed_precision`` on ``device`` (None = float32).

    GPU: ``auto`` = bf16, or fp16 where bf16 is unsupported. CPU: ``auto`` = bf16 where :func:`cpu_has_bf16`,
    else float32; ``bf16`` = bf16; ``fp16`` falls back to float32 (CPU fp16 autocast is slower than float32);
    ``off`` = float32 everywhere. On a CPU, bf16 measured slower than float32 gets a warning naming ``off``.
    """
    if setting == "off":
        return None
    if device.startswith("cuda"):
        if setting == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if setting == "bf16" else torch.float16
    return _cpu_dtype(setting)


@functools.cache
def _cpu_dtype(setting: str) -> torch.dtype | None:
    """``auto``, ``bf16`` or ``fp16`` on this CPU; cached, so the choice is logged once per run."""
    if setting == "fp16":
        logger.warning("finetune.mixed_precision: fp16 is for GPUs; training in float32 on this CPU (bf16 runs on "
                       "CPUs)")
        return None
    if setting == "auto" and not cpu_has_bf16():
        logger.info("this CPU has no bf16 instructions (%s): float32", " / ".join(BF16_FLAGS))
        return None
    speedup = cpu_bf16_speedup()
    if speedup == 0.0:
        logger.warning("finetune.mixed_precision: %s trains in bf16, but torch's oneDNN runs no bf16 on this CPU "
                       "(emulated, far slower than float32): set it to off", setting)
    elif speedup < 1.0:
        logger.warning("finetune.mixed_precision: %s trains in bf16, but this CPU multiplies bf16 matrices at "
                       "%.2fx float32's speed (measured): set it to off for faster float32 training", setting, speedup)
    else:
        logger.info("bf16 autocast: this CPU multiplies bf16 matrices %.1fx as fast as float32 (measured; "
                    "finetune.mixed_precision: off keeps float32)", speedup)
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """``float32``, ``bfloat16`` or ``float16``: the precision a run's matrix products used."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device: str, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` for ``device``'s type at ``dtype``; a no-op context with None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
