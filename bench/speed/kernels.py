"""The two kernel choices behind a CPU training step: the attention kernel in bf16 and the fused AdamW.

1. ``F.scaled_dot_product_attention`` forward + backward, PyTorch's fused (flash) CPU kernel against the
   unfused math kernel, per width, head size and precision (batch 16, 12 heads, a padding mask):
   what :mod:`crosstune.training.attention_kernel` reads its ``MATH_MAX_TOKENS`` from.
2. One AdamW step over MiniLM-L6's parameters (22.7M), ``foreach`` against ``fused``
   (:func:`crosstune.training.optimization.adamw`).
3. Whole training steps of a MiniLM-L6-shaped BERT (random weights: speed does not depend on them; attention
   dropout 0, as ``finetune.attention_dropout``) in bf16 autocast at several widths: PyTorch's kernel choice
   + foreach AdamW (before), the math kernel, and the math kernel + fused AdamW (crosstune now).

Each comparison alternates its contestants in one process; medians of ``--repeats`` after a warm-up.

    .venv/bin/python bench/speed/kernels.py          # about 4 minutes on 2 cores; writes bench/speed/kernels.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]


def _median_ms(calls: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, alternating the calls (one warm-up round not counted)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        names = list(calls) if round_ % 2 == 0 else list(calls)[::-1]
        for name in names:
            started = time.perf_counter()
            calls[name]()
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: round(1000 * statistics.median(values), 2) for name, values in times.items()}


def attention(widths: list[int], head_sizes: list[int], repeats: int) -> list[dict]:
    """Forward + backward of one attention call, flash against math, bf16 and float32."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    for head_size in head_sizes:
        for width in widths:
            for dtype in (torch.bfloat16, torch.float32):
                generator = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(16, 12, width, head_size, generator=generator, requires_grad=True)
                           for _ in range(3))
                mask = torch.ones(16, 1, width, width, dtype=torch.bool)

                def call(backend, q=q, k=k, v=v, mask=mask, dtype=dtype):
                    with sdpa_kernel(backend), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    out.float().sum().backward()

                ms = _median_ms({"flash": lambda: call(SDPBackend.FLASH_ATTENTION),
                                 "math": lambda: call(SDPBackend.MATH)}, repeats)
                rows.append({"head_size": head_size, "tokens": width, "dtype": str(dtype).removeprefix("torch."),
                             "flash_ms": ms["flash"], "math_ms": ms["math"],
                             "math_speedup": round(ms["flash"] / ms["math"], 2)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def minilm_shaped():
    """A BERT with all-MiniLM-L6-v2's shapes (6 blocks, hidden 384, 12 heads) and random weights."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, attention_probs_dropout_prob=0.0, num_labels=3,
                        attn_implementation="sdpa")
    return BertForSequenceClassification(config)


def optimizer_step(repeats: int) -> dict:
    """One AdamW step over MiniLM-L6's parameters with fresh gradients: foreach against fused."""
    import torch

    model = minilm_shaped()
    optimizers = {}
    for kind in ("foreach", "fused"):
        parameters = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for parameter in parameters:
            parameter.grad = torch.randn_like(parameter) * 1e-3
        optimizers[kind] = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.01, foreach=kind == "foreach",
                                             fused=kind == "fused" or None)
    ms = _median_ms({kind: optimizer.step for kind, optimizer in optimizers.items()}, repeats)
    row = {"parameters": sum(p.numel() for p in model.parameters()), "foreach_ms": ms["foreach"],
           "fused_ms": ms["fused"], "fused_speedup": round(ms["foreach"] / ms["fused"], 2)}
    print(json.dumps(row), flush=True)
    return row


def training_steps(widths: list[int], repeats: int) -> list[dict]:
    """Whole bf16 training steps (batch 16) at each width: before, math kernel, math kernel + fused AdamW."""
    import copy

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    base = minilm_shaped()
    contestants = {}
    for name, fused in (("before", None), ("math", None), ("math_fused", True)):
        model = copy.deepcopy(base).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=fused)
        contestants[name] = (model, optimizer)
    rows = []
    for width in widths:
        generator = torch.Generator().manual_seed(width)
        input_ids = torch.randint(1000, 30000, (16, width), generator=generator)
        attention_mask = torch.ones(16, width, dtype=torch.long)
        attention_mask[8:, width * 3 // 4:] = 0  # half the rows padded, as in a length-bucketed batch
        labels = torch.randint(0, 3, (16,), generator=generator)

        def step(name, input_ids=input_ids, attention_mask=attention_mask, labels=labels):
            model, optimizer = contestants[name]
            kernel = sdpa_kernel(SDPBackend.MATH) if name.startswith("math") else sdpa_kernel(
                [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
            with kernel, torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        ms = _median_ms({name: (lambda name=name: step(name)) for name in contestants}, repeats)
        rows.append({"tokens": width, **{f"{name}_ms": value for name, value in ms.items()},
                     "speedup": round(ms["before"] / ms["math_fused"], 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--widths", default="32,64,108,128,160,192,224,256,384,512")
    parser.add_argument("--step-widths", default="64,108,160,192,256")
    parser.add_argument("--out", default=str(REPO / "bench/speed/kernels.json"))
    args = parser.parse_args()

    import torch
    import transformers

    widths = [int(w) for w in args.widths.split(",")]
    report = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "transformers": transformers.__version__},
        "command": "python bench/speed/kernels.py " + " ".join(sys.argv[1:]),
        "attention": attention(widths, [32, 64], args.repeats),
        "optimizer_step": optimizer_step(args.repeats),
        "training_step_bf16": training_steps([int(w) for w in args.step_widths.split(",")], args.repeats),
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
