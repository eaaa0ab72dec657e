"""CPU bf16 autocast and attention dropout: what each costs and saves on this machine, measured in one run.

1. ``steps``: a MiniLM-L6 training step (batch 16 x 128 tokens, AdamW, mean pooling + linear head) and an
   inference pass, float32 against ``torch.autocast("cpu", dtype=torch.bfloat16)``, each with the backbone's
   attention dropout (0.1) and with it at 0; all four models built once, timed round-robin (alternating), median
   over rounds. Also a square float32 and bf16 matmul's rate, and pooled features' largest bf16 deviation.
2. ``pipeline``: the text default (params.yaml: drug reviews, MiniLM-L6, full fine-tuning) through the
   stage functions, per seed (42, 1, 2) the variants one after another on the same attached model:
   ``default``, ``attention_dropout: 0`` and ``mixed_precision: bf16``; test macro-F1 and accuracy (guard off:
   the fine-tuned model itself), the fine-tuning stage's seconds and its kept epoch.

Writes bench/speed/precision.json:
    .venv/bin/python bench/speed/precision.py [--parts steps,pipeline] [--seeds 42,1,2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from workdir import default_params, merge, prepare_workdir  # noqa: E402  (bench/workdir.py; also puts src/ on the path)

# "default" is the recipe as it was measured (the backbone's attention dropout, float32); spelled out so that a
# re-run measures the same three settings whatever params.yaml's defaults have become since
VARIANTS = {"default": {"finetune": {"attention_dropout": "backbone", "mixed_precision": "off"}},
            "attention_dropout_0": {"finetune": {"attention_dropout": 0.0, "mixed_precision": "off"}},
            "bf16": {"finetune": {"attention_dropout": "backbone", "mixed_precision": "bf16"}},
            "bf16_attention_dropout_0": {"finetune": {"attention_dropout": 0.0, "mixed_precision": "bf16"}}}
STEP_ROUNDS = 8


def machine() -> str:
    import torch

    from crosstune.training.precision import cpu_flags

    bf16 = sorted(flag for flag in cpu_flags() if "bf16" in flag or flag.startswith("amx"))
    return (f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"CPU bf16 flags: {', '.join(bf16) or 'none'}")


def matmul_rates(side: int = 1024, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a float32 and a bf16 square matmul (oneDNN runs bf16; MKL float32)."""
    import torch

    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        left, right = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
        left @ right
        started = time.perf_counter()
        for _ in range(repeats):
            left @ right
        seconds = time.perf_counter() - started
        rates[str(dtype).removeprefix("torch.")] = round(2 * side ** 3 * repeats / seconds / 1e9, 1)
    return rates


def steps() -> dict:
    """Per-step medians of the four training settings and the two inference ones, timed round-robin."""
    import torch

    from crosstune.backbones.text import load_backbone
    from crosstune.config import BackboneParams
    from crosstune.training.attention_dropout import set_attention_dropout
    from crosstune.training.precision import autocast

    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (16, 128))
    mask, targets = torch.ones_like(ids), torch.randint(0, 3, (16,))
    settings = {"float32": (None, 0.1), "float32, attention dropout 0": (None, 0.0),
                "bf16": (torch.bfloat16, 0.1), "bf16, attention dropout 0": (torch.bfloat16, 0.0)}
    runs = {}
    for name, (dtype, rate) in settings.items():
        model = load_backbone(BackboneParams(name="minilm-l6"), [], 0).model  # the text default's backbone
        head = torch.nn.Linear(model.config.hidden_size, 3)
        set_attention_dropout(model, rate)
        model.train()
        runs[name] = (model, head, torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-5), dtype)

    def step(model, head, optimizer, dtype) -> None:
        with autocast("cpu", dtype):
            pooled = model(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1)
            loss = torch.nn.functional.cross_entropy(head(pooled).float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(STEP_ROUNDS + 1):  # round 0 warms every kernel up and is not counted
        for name, run in runs.items():
            started = time.perf_counter()
            step(*run)
            if round_:
                seconds[name].append(time.perf_counter() - started)
    model = runs["float32"][0].eval()
    inference: dict[str, list[float]] = {"float32": [], "bf16": []}
    pooled = {}
    with torch.inference_mode():
        for round_ in range(STEP_ROUNDS + 1):
            for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
                started = time.perf_counter()
                with autocast("cpu", dtype):
                    pooled[name] = model(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1).float()
                if round_:
                    inference[name].append(time.perf_counter() - started)
    train = {name: round(statistics.median(values), 4) for name, values in seconds.items()}
    infer = {name: round(statistics.median(values), 4) for name, values in inference.items()}
    return {"train_step_seconds": train,
            "train_speedup_vs_float32": {name: round(train["float32"] / value, 3) for name, value in train.items()},
            "inference_seconds": infer, "inference_speedup_bf16": round(infer["float32"] / infer["bf16"], 3),
            "pooled_max_abs_difference_bf16": round(float((pooled["bf16"] - pooled["float32"]).abs().max()), 5),
            "pooled_std": round(float(pooled["float32"].std()), 5), "matmul_gflops": matmul_rates()}


def pipeline(seeds: list[int], variants: list[str], out: dict, path: Path) -> None:
    """The text default per seed and variant (stage functions; guard off); results saved after each run."""
    from crosstune.logging_setup import configure_logging
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage

    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="precision-"))
    params = merge(default_params(), {"evaluate": {"guard": "off"}})
    prepare_workdir(work, params, attach=False)
    runs = out.setdefault("pipeline", {"params": "params.yaml, evaluate.guard: off", "runs": []})["runs"]
    done = {(run["seed"], run["variant"]) for run in runs}
    for seed in seeds:
        seeded = merge(params, {"base": {"seed": seed}})
        run_dir = work / f"seed-{seed}"
        run_dir.mkdir()
        (run_dir / "params.yaml").write_text(yaml.safe_dump(seeded))
        attach_head_stage(str(work / "backbone"), str(work / "prepared"), str(run_dir / "initial"),
                          str(run_dir / "freeze.json"), str(run_dir / "params.yaml"))
        cache_stage(str(run_dir / "initial"), str(work / "encoded"), str(run_dir / "features"),
                    str(run_dir / "params.yaml"))
        for variant in variants:
            overrides = VARIANTS[variant]
            if (seed, variant) in done:
                continue
            variant_dir = run_dir / variant
            variant_dir.mkdir()
            variant_params = variant_dir / "params.yaml"
            variant_params.write_text(yaml.safe_dump(merge(seeded, overrides)))
            started = time.perf_counter()
            summary = finetune_stage(str(run_dir / "initial"), str(work / "encoded"), str(variant_dir / "model"),
                                     str(variant_dir / "live"), str(variant_params), str(run_dir / "features"))
            seconds = time.perf_counter() - started
            metrics = evaluate_stage(str(variant_dir / "model"), str(work / "encoded"), str(work / "prepared"),
                                     str(variant_dir / "eval.json"), str(variant_dir / "predictions.csv"),
                                     str(variant_dir / "misclassified.png"), str(variant_params))
            runs.append({"seed": seed, "variant": variant, "f1_macro": metrics["f1_macro"],
                         "accuracy": metrics["accuracy"], "finetune_seconds": round(seconds, 1),
                         "best_epoch": summary.get("best_epoch")})
            path.write_text(json.dumps(out, indent=1) + "\n")
            print(json.dumps(runs[-1]), flush=True)
    summarise(out)


def summarise(out: dict) -> None:
    """Mean and standard deviation over seeds per variant, and each variant's time against the base's: the
    first of ``VARIANTS`` that has runs (``default``; ``attention_dropout_0`` where it was not run)."""
    runs = out["pipeline"]["runs"]
    summary = {}
    for variant in VARIANTS:
        rows = [run for run in runs if run["variant"] == variant]
        if not rows:
            continue
        f1 = [row["f1_macro"] for row in rows]
        summary[variant] = {"seeds": len(rows), "f1_macro_mean": round(statistics.mean(f1), 4),
                            "f1_macro_std": round(statistics.stdev(f1), 4) if len(f1) > 1 else None,
                            "finetune_seconds_mean": round(statistics.mean(row["finetune_seconds"] for row in rows), 1)}
    base_variant = next(iter(summary), None)
    base = summary.get(base_variant, {}).get("finetune_seconds_mean")
    for values in summary.values():
        values[f"time_vs_{base_variant}"] = round(values["finetune_seconds_mean"] / base, 3) if base else None
    out["pipeline"]["summary"] = summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="steps,pipeline")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--variants", default="default,attention_dropout_0,bf16",
                        help=f"pipeline variants, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", default=str(REPO / "bench/speed/precision.json"))
    args = parser.parse_args()
    path = Path(args.out)
    out = json.loads(path.read_text()) if path.exists() else {}
    out["machine"] = machine()
    out["command"] = "python bench/speed/precision.py " + " ".join(sys.argv[1:])
    parts = args.parts.split(",")
    if "steps" in parts:
        out["steps"] = steps()
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out["steps"], indent=1), flush=True)
    if "pipeline" in parts:
        variants = args.variants.split(",")
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            parser.error(f"unknown variants {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
        pipeline([int(seed) for seed in args.seeds.split(",")], variants, out, path)
        path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
