"""Prediction throughput: `crosstune predict` with PyTorch and with ONNX Runtime against
`transformers.pipeline("text-classification")`, on the same model and the same texts, in one process,
alternating, 3 rounds.

The model is the text default's MiniLM encoder (``models/backbone``, made by `make repro`) with a
``head.type: hf`` head (``BertForSequenceClassification``), so the stock pipeline loads the very directory
crosstune predicts with; throughput does not depend on the head's weights. The texts are the default's
379 test reviews (``data/raw/test.csv``), truncated to the default ``backbone.max_length`` (256 tokens) by
every runner. Each runner is timed from texts to labels (tokenizing included), after one warm-up call.

    .venv/bin/python bench/predict/throughput.py --out bench/predict/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
MAX_LENGTH = 256
BATCH_SIZE = 64


def build_model(directory: Path) -> None:
    """The default encoder with a stock Hugging Face classification head, saved as crosstune saves it."""
    from transformers import AutoModel, AutoTokenizer

    from crosstune.transfer_model.modules import build_transfer_model
    from crosstune.transfer_model.storage import save_transfer_model

    source = ROOT / "models" / "backbone"
    if not (source / "config.json").is_file():
        raise SystemExit(f"{source}: missing; run `make repro` first (the backbone stage writes it).")
    backbone = AutoModel.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = build_transfer_model(backbone, task="classification", labels=["negative", "neutral", "positive"],
                                 head_type="hf", pooling="cls", dropout=0.1, hidden_dim=256, seed=0)
    save_transfer_model(model, directory, tokenizer, extra={"max_length": MAX_LENGTH, "freeze": {"depth": 0}})


def runners(model_dir: Path, onnx_dir: Path) -> dict[str, Callable[[list[str]], list]]:
    from transformers import pipeline

    from crosstune.inference.predictor import Predictor

    torch_predictor = Predictor.from_directory(model_dir)
    onnx_predictor = Predictor.from_directory(onnx_dir, runtime="onnx")
    stock = pipeline("text-classification", model=str(model_dir), device=-1)
    return {
        "crosstune predict (PyTorch)": lambda texts: torch_predictor.predict(texts, batch_size=BATCH_SIZE),
        "crosstune predict --onnx (ONNX Runtime)": lambda texts: onnx_predictor.predict(texts, batch_size=BATCH_SIZE),
        f"transformers.pipeline, batch_size={BATCH_SIZE}": lambda texts: stock(
            texts, batch_size=BATCH_SIZE, truncation=True, max_length=MAX_LENGTH),
        "transformers.pipeline, default (batch_size=1)": lambda texts: stock(
            texts, truncation=True, max_length=MAX_LENGTH),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "predict" / "throughput.json"))
    args = parser.parse_args()
    from crosstune.inference.onnx_export import ONNX_NAME, write_onnx

    torch.manual_seed(0)
    texts = pd.read_csv(ROOT / "data" / "raw" / "test.csv")["review"].astype(str).tolist()
    with tempfile.TemporaryDirectory() as workdir:
        model_dir, onnx_dir = Path(workdir) / "model", Path(workdir) / "onnx"
        build_model(model_dir)
        shutil.copytree(model_dir, onnx_dir)  # the graph beside the same config and tokenizer (no model card)
        write_onnx(model_dir, onnx_dir / ONNX_NAME)
        timed = runners(model_dir, onnx_dir)
        labels = {}
        for name, run in timed.items():  # a warm-up pass, which also gives each runner's labels
            labels[name] = [item["label"] for item in run(texts)]
        seconds: dict[str, list[float]] = {name: [] for name in timed}
        for round_index in range(args.rounds):
            for name, run in timed.items():
                started = time.perf_counter()
                run(texts)
                seconds[name].append(time.perf_counter() - started)
                print(f"round {round_index + 1} {name}: {len(texts) / seconds[name][-1]:.1f} texts/s", flush=True)
    reference = labels["crosstune predict (PyTorch)"]
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "texts": len(texts), "max_length": MAX_LENGTH, "rounds": args.rounds,
        "runners": {name: {"texts_per_second": round(len(texts) / statistics.mean(values), 1),
                           "seconds": [round(value, 3) for value in values],
                           "same_labels_as_pytorch": sum(a == b for a, b in zip(labels[name], reference)) / len(texts)}
                    for name, values in seconds.items()},
    }
    base = results["runners"]["transformers.pipeline, default (batch_size=1)"]["texts_per_second"]
    for entry in results["runners"].values():
        entry["vs_pipeline_default"] = round(entry["texts_per_second"] / base, 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
