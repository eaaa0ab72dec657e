"""Mixed precision: which autocast dtype a run uses, by ``finetune.mixed_precision`` and the device.

On a GPU ``auto`` is bf16 (fp16 with a grad scaler where bf16 is missing). On a CPU ``auto`` is float32, and bf16
autocast is opt-in (``bf16``). Autocast (https://pytorch.org/docs/stable/amp.html) runs matmuls in bf16,
y = bf16(x) bf16(W) accumulated in float32, and keeps weights, optimizer and reductions (softmax, layer norm,
loss) in float32.

Why float32 by default on a CPU: a teammate must get the committed test metrics back. Measured on the text
default (bench/reproducibility/README.md): in float32 ``metrics/eval.json`` came out byte-identical with this
AMD EPYC's full instruction set and with its kernels capped to AVX-512 without bf16 and to AVX2 (PyTorch's,
oneDNN's and MKL's choice alike); in bf16 the same seed gave test macro-F1 0.5586 on the EPYC (AVX512-BF16) and
0.5758 on an Intel Xeon with AMX, whose bf16 tiles round differently. The price: bf16 fine-tunes 1.83x faster on
the EPYC (bench/speed/precision_epyc.json, test macro-F1 0.5525 +/- 0.017 against float32's 0.5568 +/- 0.022 over
3 seeds: within seed noise), 3.6x faster matrix products on the AMX CPU, and 1.32x slower on an Intel CPU without
AMX (bench/speed/precision.json). ``bf16`` asked for on a CPU runs bf16 wherever oneDNN can; a timed probe
(:func:`cpu_bf16_speedup`) then warns, naming ``off``, where it is the slower choice or emulated. The finetune
metrics record the precision that ran (``precision``).
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

    GPU: ``auto`` = bf16, or fp16 where bf16 is unsupported. CPU: ``auto`` = float32 (it reproduces across
    CPUs, see the module docstring); ``bf16`` = bf16; ``fp16`` falls back to float32 (CPU fp16 autocast is slower
    than float32); ``off`` = float32 everywhere. On a CPU, bf16 measured slower than float32 gets a warning naming
    ``off``.
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
    if setting == "auto":
        if cpu_has_bf16():
            logger.info("float32 (finetune.mixed_precision: auto on a CPU reproduces across CPUs); this CPU has bf16 "
                        "instructions: finetune.mixed_precision: bf16 trains faster, in metrics of this CPU only")
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
