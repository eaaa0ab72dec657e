"""Seeding, device and thread set-up: one place, so every stage is reproducible the same way."""

from __future__ import annotations

import logging
import os
import random

from crosstune.config import BaseParams

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from the one seed in ``params.yaml``."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def resolve_device(base: BaseParams) -> str:
    """``auto`` means cuda when a GPU is visible, else cpu; asking for cuda without one is an error."""
    import torch

    if base.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if base.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("params.yaml: base.device: 'cuda' but no GPU is visible; set base.device: auto or cpu.")
    return base.device


def configure_threads(base: BaseParams) -> int:
    """Use every core (or ``base.num_threads``) for torch's CPU kernels; returns the count used."""
    import torch

    threads = base.num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads


def setup(base: BaseParams) -> str:
    """Seed, set threads, pick the device and (``base.deterministic``) allow deterministic kernels only;
    returns the device name."""
    import torch

    seed_everything(base.seed)
    threads = configure_threads(base)
    device = resolve_device(base)
    if base.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; read when the first CUDA handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(base.deterministic)
    if device == "cuda":
        # TF32 tensor cores for float32 matmuls and convolutions: ~10 bits of mantissa, far faster.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    logger.info("seed=%d device=%s threads=%d%s", base.seed, device, threads,
                " deterministic kernels only" if base.deterministic else "")
    return device
