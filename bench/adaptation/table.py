"""Markdown tables of bench/adaptation/results.json (one per dataset), for bench/adaptation/README.md.

    .venv/bin/python bench/adaptation/table.py [results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"none": "source-only", "dann": "DANN", "cdan": "CDAN", "coral": "Deep CORAL", "mmd": "MK-MMD"}


def table(dataset: str, entries: dict) -> str:
    baseline = entries.get("none", {}).get("accuracy_mean")
    lines = [f"### {dataset}", "", "| method | target test accuracy | vs source-only | target macro-F1 | "
             "proxy A-distance before -> after | per seed (accuracy) |", "| --- | --- | --- | --- | --- | --- |"]
    for method in sorted((name for name in entries if name != "data"), key=lambda name: list(NAMES).index(name)
                         if name in NAMES else len(NAMES)):
        entry = entries[method]
        gain = f"{100 * (entry['accuracy_mean'] - baseline):+.1f} pts" if baseline is not None else ""
        gap = (f"{entry['proxy_a_distance_before_mean']:.3f} -> {entry['proxy_a_distance_after_mean']:.3f}"
               if "proxy_a_distance_after_mean" in entry else "")
        seeds = ", ".join(f"{run['accuracy']:.3f}" for run in entry["runs"])
        if len(entry["runs"]) < 3:
            seeds += f" (only {len(entry['runs'])} of 3 seeds finished)"
        lines.append(f"| {NAMES.get(method, method)} | {entry['accuracy_mean']:.3f} ± {entry['accuracy_std']:.3f} | "
                     f"{gain if method != 'none' else '-'} | {entry['f1_macro_mean']:.3f} ± {entry['f1_macro_std']:.3f} "
                     f"| {gap} | {seeds} |")
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results.json")
    results = json.loads(path.read_text())
    print("\n\n".join(table(dataset, entries) for dataset, entries in results.items()))


if __name__ == "__main__":
    main()
