"""The reproducibility matrix as a Markdown table: each cell's test metrics and, file by file, whether its outputs
are byte-identical to the reference cell of its precision (``float32``, ``bf16``: this CPU with everything).

    .venv/bin/python bench/reproducibility/table.py [results_epyc.json] [--kept DIR]

``--kept DIR`` fingerprints cells whose results predate per-file records from copies of their clones
(``DIR/<cell>/metrics``, ``DIR/<cell>/dvc.lock``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run import OUT, fingerprints  # noqa: I001 - run.py sits beside this script

GROUPS = {  # column -> which fingerprints it covers
    "eval.json": lambda name: name == "metrics/eval.json",
    "other metrics": lambda name: name.startswith("metrics/") and name not in (
        "metrics/eval.json", "metrics/predictions.csv", "metrics/finetune/plots/metrics/train/loss.tsv"),
    "training-loss log": lambda name: name == "metrics/finetune/plots/metrics/train/loss.tsv",
    "predictions.csv": lambda name: name == "metrics/predictions.csv",
    "weights (dvc.lock)": lambda name: name.startswith("dvc.lock:"),
}


def compare(files: dict[str, str], reference: dict[str, str]) -> dict[str, str]:
    """Per column: ``same`` when every covered file equals the reference's, else which differ."""
    verdicts = {}
    for column, covers in GROUPS.items():
        names = [name for name in reference if covers(name)]
        differ = [name for name in names if files.get(name) != reference[name]]
        verdicts[column] = "same" if not differ else f"differs ({len(differ)} of {len(names)})"
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=OUT)
    parser.add_argument("--kept", type=Path, help="copies of the cells' clones, for cells without per-file records")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    cells = results["cells"]
    for name, cell in cells.items():
        if "files" not in cell and args.kept is not None and (args.kept / name / "dvc.lock").is_file():
            cell["files"] = fingerprints(args.kept / name)
    print(f"Machine: {results['cpu']}; commit {results['revision']}.\n")
    print("| cell | precision ran | deterministic | threads | kernels capped to | test macro-F1 | accuracy | "
          "seconds | " + " | ".join(GROUPS) + " |")
    print("| --- " * (8 + len(GROUPS)) + "|")
    for name, cell in cells.items():
        if "error" in cell:
            print(f"| {name} | failed: {cell['error'][-200:]!r} |")
            continue
        if "partial" in cell:  # a cell stopped early: what it logged before, against the others
            print(f"| {name} | {cell['ran_in']} | {cell['deterministic']} | {cell['threads']} | {cell['isa']} | "
                  f"{cell['partial']}: {json.dumps(cell['epoch_1'])} |")
            continue
        reference = cells["bf16" if cell["precision"] == "bf16" else "float32"].get("files", {})
        verdicts = compare(cell.get("files", {}), reference) if reference else {}
        print(f"| {name} | {cell['ran_in']} | {cell['deterministic']} | {cell['threads']} | {cell['isa']} | "
              f"{cell['f1_macro']:.6f} | {cell['accuracy']:.6f} | {cell['seconds']:.0f} | "
              + " | ".join(verdicts.get(column, "?") for column in GROUPS) + " |")
    committed = results["committed"]
    committed_files = committed.get("files") or committed.get("sha256", {})
    print(f"| {committed['cell']} | bfloat16 | False | all | (its own: AMX) | {committed['f1_macro']:.6f} | "
          f"{committed['accuracy']:.6f} | | eval.json "
          + ("same as float32" if committed_files.get("metrics/eval.json") ==
             cells["float32"].get("files", {}).get("metrics/eval.json") else "differs from both") + " | | | | |")


if __name__ == "__main__":
    main()
