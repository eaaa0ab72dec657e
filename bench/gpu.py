"""GPU throughput: samples/s and model FLOPs utilisation (MFU) of crosstune's training loop.

Runs the embedded text default (all-MiniLM-L6-v2 on the drug reviews) on one GPU with bf16 autocast,
fused AdamW, TF32 matmuls and batch 64, for full fine-tuning and for a half-frozen run (bottom 3 of 6
blocks frozen, their outputs cached once). Samples/s come from the training passes after the first
(warm-up) epoch; FLOPs are counted analytically from the real token counts of every batch (per
block and token: 2 (4 H^2 + 2 H I) for the matmuls plus 4 T H for attention; a trainable block costs
3x its forward pass, a frozen uncached block 1x, a cached one 0). MFU = achieved FLOP/s / the GPU's
dense bf16 peak. Takes well under 5 minutes on one GPU.

    python bench/gpu.py                 # on a GPU; writes bench/gpu_results.json
    python bench/gpu.py --smoke         # CPU smoke mode (tiny random BERT, 2 short epochs): what tests run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml
from workdir import (  # bench/workdir.py, beside this script (puts src/ on the path)
    REPO,
    prepare_workdir,
)

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0,
                    "RTX 4090": 165.0}


def peak_flops(device_name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None


def training_flops(lengths: list[int], config: dict, frozen: int, cached: bool) -> float:
    """FLOPs of one training pass over sequences of ``lengths`` tokens."""
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    total = 0.0
    for tokens in lengths:
        block = tokens * 2 * (4 * hidden * hidden + 2 * hidden * inner) + 4 * tokens * tokens * hidden
        trainable = layers - frozen
        total += 3 * block * trainable + (0 if cached else block * frozen)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny random BERT, a few steps")
    parser.add_argument("--epochs", type=int, default=0, help="default: 4 on a GPU, 2 in smoke mode")
    parser.add_argument("--batch-size", type=int, default=0, help="default: 64 on a GPU, 8 in smoke mode")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak if not known")
    parser.add_argument("--out", default=None, help="default: bench/gpu_results.json (smoke: a temporary file)")
    args = parser.parse_args()

    import torch

    from crosstune.config import BaseParams, FinetuneParams, load_section
    from crosstune.data.batching import TextBatching, load_any_split
    from crosstune.freezing.policy import apply_freeze
    from crosstune.logging_setup import configure_logging
    from crosstune.prefix_cache.store import CachedBatching, build_cached_split
    from crosstune.runtime import setup
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import RunContext
    from crosstune.transfer_model.storage import load_transfer_model

    configure_logging("WARNING")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no GPU visible; run with --smoke for the CPU smoke mode")
    epochs = args.epochs or (2 if args.smoke else 4)
    batch_size = args.batch_size or (8 if args.smoke else 64)
    work = Path(tempfile.mkdtemp(prefix="crosstune-gpu-"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {"train": str(REPO / "data/raw/train.csv"), "test": str(REPO / "data/raw/test.csv")}
    params["base"]["device"] = "cpu" if args.smoke else "cuda"
    params["finetune"].update({"epochs": epochs, "batch_size": batch_size, "mixed_precision": "auto"})
    if args.smoke:
        params["backbone"].update({"name": "tiny-bert", "max_length": 64})
        params["finetune"]["max_length"] = 64
    path = prepare_workdir(work, params)
    device = setup(load_section(BaseParams, path))
    finetune = load_section(FinetuneParams, path)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = peak_flops(device_name, args.peak_tflops) if device == "cuda" else None
    results = {"device": device_name, "torch": torch.__version__, "epochs": epochs, "batch_size": batch_size,
               "tf32": bool(torch.backends.cuda.matmul.allow_tf32), "runs": {}}
    for run, cached_half in (("full_finetuning", False), ("half_frozen_cached", True)):
        model, config = load_transfer_model(work / "initial")
        layers = int(config["backbone_config"]["num_hidden_layers"])
        frozen = layers // 2 if cached_half else 0
        apply_freeze(model, frozen)
        model.to(device)
        train_split = load_any_split(work / "encoded/train.safetensors")
        validation_split = load_any_split(work / "encoded/validation.safetensors")
        lengths = train_split.lengths.clamp(max=finetune.max_length).tolist()
        batching, level, cache_seconds = TextBatching(batch_size, finetune.max_length), None, 0.0
        if cached_half:
            started = time.perf_counter()
            train_split, validation_split = (build_cached_split(model, frozen, split, batching, 256, "float32", device)
                                             for split in (train_split, validation_split))
            cache_seconds = time.perf_counter() - started
            batching, level = CachedBatching(batch_size, "text"), frozen
        result = train(model, TrainingData(train_split, validation_split, batching, level), finetune, 42,
                       RunContext.single_process(device, finetune.mixed_precision))
        timed = result.epoch_seconds[1:] or result.epoch_seconds
        seconds = sum(timed) / len(timed)
        flops = training_flops(lengths, config["backbone_config"], frozen, cached_half)
        results["runs"][run] = {
            "frozen_blocks": frozen, "cache_seconds": round(cache_seconds, 3), "epoch_seconds": round(seconds, 3),
            "samples_per_second": float(f"{len(lengths) / seconds:.4g}"),  # significant digits: a loaded CPU
            "tokens_per_second": float(f"{sum(lengths) / seconds:.4g}"),  # in smoke mode is slow, not zero
            "model_tflops_per_second": float(f"{flops / seconds / 1e12:.4g}"),
            "mfu": round(flops / seconds / peak, 4) if peak else None,
            "best_validation_f1_macro": round(result.best_metrics.get("f1_macro", float("nan")), 4),
        }
        print(run, results["runs"][run], flush=True)
    out = Path(args.out) if args.out else (work / "gpu_results.json" if args.smoke else REPO / "bench/gpu_results.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
