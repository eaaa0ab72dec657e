"""Which scaled-dot-product-attention kernel a CPU training step in bf16 runs.

PyTorch picks its fused (flash) CPU kernel for ``F.scaled_dot_product_attention`` whenever it can. In bf16
its backward pass is slow on short sequences. Forward + backward of one attention call with a padding mask
(batch 16, 12 heads of 32, 2 cores, torch 2.14) ran 2.0x faster in the unfused "math" kernel
(softmax(QK^T / sqrt(d) + mask) V as separate ops) at 108 tokens, 1.5x at 128 and 1.35x at 160, but 0.76x
at 192 and 0.53x at 256, where the fused kernel wins; heads of 64 cross over at the same width. In float32
the fused kernel is faster at every width (``bench/speed/kernels.json``). So a text batch in bf16 on a CPU
runs the math kernel when it is at most :data:`MATH_MAX_TOKENS` tokens wide; every other batch, and
evaluation, keeps PyTorch's choice. The rule reads only the batch width, so a run makes the same choice on
every machine.

Why it matters against Hugging Face ``Trainer``: with attention dropout (BERT's 0.1) PyTorch cannot use the
fused CPU kernel and already runs the math one (``torch._fused_sdp_choice``: 0 = math at dropout 0.1,
1 = flash at 0), so dropping attention dropout (``finetune.attention_dropout: 0``) had moved crosstune's
bf16 steps onto the kernel that is slower for short batches.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

MATH_MAX_TOKENS = 160  # widest bf16 text batch for the math kernel (crossover between 160 and 192 tokens)


def uses_math_kernel(device: str, dtype: torch.dtype | None, inputs: dict[str, Any]) -> bool:
    """True for a CPU bf16 step on a text batch (token ids, or cached hidden states, with an attention mask)
    at most :data:`MATH_MAX_TOKENS` tokens wide."""
    if device != "cpu" or dtype != torch.bfloat16 or "attention_mask" not in inputs:
        return False
    if "input_ids" not in inputs and "hidden_states" not in inputs:
        return False
    return int(inputs["attention_mask"].shape[-1]) <= MATH_MAX_TOKENS


def attention_kernel(device: str, dtype: torch.dtype | None, *inputs: dict[str, Any]) -> ContextManager:
    """The math SDPA kernel where :func:`uses_math_kernel` holds for every batch of the step (a source and a
    target batch under domain adaptation), else a no-op context (PyTorch's choice)."""
    if not all(uses_math_kernel(device, dtype, batch_inputs) for batch_inputs in inputs):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)
