"""Why crosstune's lead over length-grouped Trainer shrinks with size: the tokens each one pads to.

Both contestants pad each batch to its longest row, so an epoch's work is set by how batches are cut:

    padded tokens = sum over batches of (rows x width),   attention = sum over batches of (rows x width^2)

crosstune (:func:`crosstune.data.text_encoding.batch_indices`) sorts buckets of ``BUCKET_BATCHES`` batches
by length; Trainer's ``group_by_length`` (``transformers.trainer_pt_utils.get_length_grouped_indices``) sorts
megabatches of ``min(N // (4 x batch), 50)`` batches. This counts both over 3 seeded epochs of the scaling
benchmark's training splits (no training), with crosstune's bucket size as a variable, and writes
``bench/scaling/padding.json``.

    .venv/bin/python bench/scaling/padding.py --copies 0,3,15
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))

from workdir import prepare_workdir  # noqa: E402

BATCH, EPOCHS = 16, 3


def work(batches: list[list[int]], lengths: list[int]) -> dict[str, float]:
    """Padded tokens, real tokens, attention cells and distinct widths of one epoch's batches."""
    widths = [max(lengths[i] for i in batch) for batch in batches]
    return {"padded_tokens": sum(len(b) * w for b, w in zip(batches, widths)),
            "real_tokens": sum(lengths[i] for batch in batches for i in batch),
            "attention_cells": sum(len(b) * w * w for b, w in zip(batches, widths)),
            "distinct_widths": len(set(widths))}


def crosstune_epoch(lengths: list[int], bucket_batches: int | None, generator) -> list[list[int]]:
    """crosstune's batches for one epoch with ``BUCKET_BATCHES`` set to ``bucket_batches`` (None: the whole set)."""
    import torch

    from crosstune.data import text_encoding

    saved = text_encoding.BUCKET_BATCHES
    text_encoding.BUCKET_BATCHES = bucket_batches or len(lengths)
    try:
        return [b.tolist() for b in text_encoding.batch_indices(torch.tensor(lengths), BATCH, generator)]
    finally:
        text_encoding.BUCKET_BATCHES = saved


def trainer_epoch(lengths: list[int], generator) -> list[list[int]]:
    """Trainer's ``group_by_length`` batches for one epoch: its sampler's order, cut every ``BATCH`` rows."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(lengths, BATCH, generator=generator)
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


def count(lengths: list[int], bucket_sizes: list[int | None]) -> dict[str, dict[str, float]]:
    """Mean per-epoch work over ``EPOCHS`` seeded epochs for Trainer (grouped and random) and crosstune."""
    import torch

    def mean_over_epochs(make) -> dict[str, float]:
        generator = torch.Generator().manual_seed(42)
        epochs = [work(make(generator), lengths) for _ in range(EPOCHS)]
        return {key: sum(e[key] for e in epochs) / EPOCHS for key in epochs[0]}

    def random_epoch(generator):
        order = torch.randperm(len(lengths), generator=generator).tolist()
        return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]

    out = {"trainer": mean_over_epochs(random_epoch), "trainer_grouped": mean_over_epochs(
        lambda g: trainer_epoch(lengths, g))}
    for size in bucket_sizes:
        out[f"crosstune_bucket_{size or 'all'}"] = mean_over_epochs(lambda g, s=size: crosstune_epoch(lengths, s, g))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", default="0,3,15")
    parser.add_argument("--buckets", default="50,100,200,all", help="crosstune BUCKET_BATCHES values ('all': one)")
    parser.add_argument("--out", default=str(REPO / "bench/scaling/padding.json"))
    args = parser.parse_args()

    import yaml

    from crosstune.config import FinetuneParams, load_section
    from crosstune.data.text_encoding import load_split
    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    buckets = [None if b == "all" else int(b) for b in args.buckets.split(",")]
    report = {"command": "python bench/scaling/padding.py " + " ".join(sys.argv[1:]), "batch_size": BATCH,
              "epochs": EPOCHS, "sizes": {}}
    for copies in args.copies.split(","):
        workdir = Path(tempfile.mkdtemp(prefix="crosstune-padding-"))
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["text_augment"]["copies"] = int(copies)
        params["data"] = {"train": str(REPO / "data/raw/train.csv"), "test": str(REPO / "data/raw/test.csv")}
        params_path = prepare_workdir(workdir, params, attach=False)
        max_length = load_section(FinetuneParams, params_path).max_length
        lengths = load_split(workdir / "encoded/train.safetensors").lengths.clamp(max=max_length).tolist()
        counts = count(lengths, buckets)
        base = counts["trainer_grouped"]
        for entry in counts.values():
            entry["padding_share"] = round(1 - entry["real_tokens"] / entry["padded_tokens"], 4)
            entry["tokens_vs_grouped"] = round(entry["padded_tokens"] / base["padded_tokens"], 4)
            entry["attention_vs_grouped"] = round(entry["attention_cells"] / base["attention_cells"], 4)
        report["sizes"][str(len(lengths))] = counts
        print(len(lengths), json.dumps({k: {m: v[m] for m in ("padding_share", "tokens_vs_grouped",
                                                              "attention_vs_grouped", "distinct_widths")}
                                        for k, v in counts.items()}, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
