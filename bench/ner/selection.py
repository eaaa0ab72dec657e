"""Does selection rank the text backbones as their fine-tuned entity F1 does? Kendall's tau per corpus.

The backbone stage with ``backbone.select: score`` scores every candidate on the frozen first-sub-token features of
a seeded sample of training sentences (each word one example, its tag the label; ``backbone.selection_samples``)
by LogME and by 5-NN, as `dvc repro` does for a user. The fine-tuned F1 of each candidate is the mean over seeds of
``run.py``'s ``crosstune`` rows (``--backbones``), so run those first. tau (Kendall 1938, tau-b as scipy computes
it) = (concordant - discordant pairs) / sqrt of the untied pairs of each ranking: 1 when the scores order the
backbones exactly as fine-tuning does.

    .venv/bin/python bench/ner/run.py --seeds 42 --tools crosstune --backbones minilm-static,minilm-l6@3
    .venv/bin/python bench/ner/selection.py [--data ncbi] [--candidates minilm-l6,minilm-l6@3,minilm-static]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from run import corpus_params  # noqa: E402  (bench/ner/run.py, this script's folder)
from workdir import machine, prepare_workdir  # noqa: E402  (also puts src/ on the path)

SCORES = ("logme", "knn")


def selection_scores(data: str, candidates: list[str], score: str) -> tuple[dict[str, float], float]:
    """Every candidate's ``score`` from the backbone stage, and the stage's seconds (prepare excluded)."""
    params = corpus_params(data, {"backbone": {"select": "score", "candidates": candidates, "score": score}})
    work = Path(tempfile.mkdtemp(prefix=f"crosstune-ner-selection-{score}-"))
    started = time.perf_counter()
    prepare_workdir(work, params, attach=False)
    selection = json.loads((work / "selection.json").read_text())
    return {name: selection[f"{name}_{score}"] for name in candidates}, time.perf_counter() - started


def finetuned_f1(results: dict, data: str) -> dict[str, list[float]]:
    """Test entity F1 of run.py's crosstune rows on all training sentences, per backbone."""
    found: dict[str, list[float]] = {}
    for run in results["runs"]:
        if run["tool"] == "crosstune" and run["data"] == data and run["size"] is None:
            found.setdefault(run["backbone"], []).append(run["test"]["entity_f1"])
    return found


def main() -> None:
    from scipy.stats import kendalltau

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="ncbi")
    parser.add_argument("--candidates", default="minilm-l6,minilm-l6@3,minilm-static")
    parser.add_argument("--out", default=str(REPO / "bench/ner/selection.json"))
    args = parser.parse_args()
    candidates = args.candidates.split(",")
    tuned = finetuned_f1(json.loads((REPO / "bench/ner/results.json").read_text()), args.data)
    missing = [name for name in candidates if name not in tuned]
    if missing:
        raise SystemExit(f"no fine-tuned crosstune run of {missing} on {args.data} in bench/ner/results.json; run "
                         f"`bench/ner/run.py --tools crosstune --backbones {','.join(missing)}` first")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    entry = {"candidates": candidates, "machine": machine(),
             "finetuned_f1": {name: statistics.mean(tuned[name]) for name in candidates},
             "seeds": {name: len(tuned[name]) for name in candidates}}
    for score in SCORES:
        values, seconds = selection_scores(args.data, candidates, score)
        ranked = [entry["finetuned_f1"][name] for name in candidates]
        entry[score] = {"scores": values, "seconds": round(seconds, 1),
                        "pick": max(values, key=values.get),
                        "tau": float(kendalltau([values[name] for name in candidates], ranked).statistic)}
        print(args.data, score, json.dumps(entry[score]), flush=True)
    results[args.data] = entry
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
