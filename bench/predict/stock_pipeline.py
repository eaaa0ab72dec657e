"""Does the stock `transformers.pipeline("text-classification")` on a `crosstune export` label the text default's
test reviews as `crosstune predict` does? The default's whole pipeline with `head.type: hf` (the Hugging Face
form; its pooling is `cls`), run in a fresh clone; then the raw test reviews (as `data/raw/test.csv` holds them,
HTML entities and all) through both.

    .venv/bin/python bench/predict/stock_pipeline.py [--revision HEAD] [--out bench/predict/stock_pipeline.json]

Three rows: `crosstune predict` on models/finetuned (the reference), the stock pipeline on the export (whose
tokenizer carries crosstune's clean-up), and the stock pipeline on models/finetuned itself (the tokenizer alone,
as before the export carried it). `truncation=True` in the pipeline call: the export's tokenizer_config says
the model's max_length, as crosstune truncates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("stock_pipeline.json")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revision", default="HEAD")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--clone", type=Path, help="a clone where this ran before: export and compare only")
    args = parser.parse_args()
    if args.clone is not None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        run([str(REPO / ".venv" / "bin" / "python"), "-m", "crosstune", "export", "--out", "export"], args.clone, env)
        text_column = yaml.safe_load((args.clone / "params.yaml").read_text())["prepare"]["text_column"]
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.clone, capture_output=True,
                                  text=True, check=True).stdout.strip()
        result = {**compare(args.clone, text_column), "revision": f"{revision} (the clone's pipeline run)"}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="crosstune-stock-") as work:
        clone = Path(work) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", args.revision], cwd=clone, check=True)
        params = yaml.safe_load((clone / "params.yaml").read_text())
        params["head"].update({"type": "hf", "pooling": "cls"})
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        bin_dir = REPO / ".venv" / "bin"
        env = {**os.environ, "PYTHONPATH": str(clone / "src"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
        started = time.perf_counter()
        run([str(bin_dir / "dvc"), "repro"], clone, env)
        seconds = time.perf_counter() - started
        run([str(bin_dir / "python"), "-m", "crosstune", "export", "--out", "export"], clone, env)
        result = compare(clone, params["prepare"]["text_column"])
    result.update({"revision": args.revision, "machine": platform.processor() or platform.machine(),
                   "dvc_repro_seconds": round(seconds, 1)})
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


def compare(clone: Path, text_column: str) -> dict:
    import pandas as pd
    import transformers

    import crosstune

    texts = pd.read_csv(clone / "data" / "raw" / "test.csv", dtype=str, keep_default_na=False)[text_column].tolist()
    reference = crosstune.load(clone / "models" / "finetuned").predict(texts)
    rows = {}
    for name, directory in (("stock pipeline on the export", clone / "export"),
                            ("stock pipeline on models/finetuned (tokenizer alone)", clone / "models" / "finetuned")):
        classify = transformers.pipeline("text-classification", model=str(directory), device="cpu")
        served = classify(texts, truncation=True, batch_size=32)
        labels = sum(a["label"] == b["label"] for a, b in zip(served, reference))
        gaps = [abs(a["score"] - b["score"]) for a, b in zip(served, reference) if a["label"] == b["label"]]
        rows[name] = {"texts": len(texts), "same_label": labels, "different_label": len(texts) - labels,
                      "max_score_gap_where_same": round(max(gaps), 8) if gaps else None}
    return {"reference": "crosstune predict on models/finetuned", "rows": rows}


if __name__ == "__main__":
    main()
