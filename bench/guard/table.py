"""Print bench/guard/results.json as the Markdown tables of bench/guard/README.md.

    .venv/bin/python bench/guard/table.py [results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from crosstune.evaluation.guard import TRIVIAL_BASELINES


def _learned(baselines: dict[str, float]) -> tuple[str, float]:
    """The best learned baseline (trivial ones ignored, as the rule does) and its score."""
    name = max((key for key in baselines if key not in TRIVIAL_BASELINES), key=baselines.__getitem__)
    return name, baselines[name]


def panel_table(rows: list[dict]) -> str:
    lines = ["| task | seed | fine-tuned val | best learned baseline val | auto | scratch val / test (full guard) "
             "| fine-tuned test | full guard: negative transfer / exports scratch | miss | scratch s saved |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        name, value = _learned(row["baselines_validation"])
        saved = 0.0 if row["auto_trains_scratch"] else row["scratch_seconds"]
        lines.append(f"| {row['task']} | {row['seed']} | {row['finetuned_validation']:.3f} | {name} {value:.3f} | "
                     f"{'trains' if row['auto_trains_scratch'] else 'skips'} | {row['scratch_validation']:.3f} / "
                     f"{row['scratch_test']:.3f} | {row['finetuned_test']:.3f} | "
                     f"{'yes' if row['full_guard_negative_transfer'] else 'no'} / "
                     f"{'yes' if row['full_guard_exports_scratch'] else 'no'} | {'**yes**' if row['miss'] else 'no'} "
                     f"| {saved:.0f} |")
    skipped = [row for row in rows if not row["auto_trains_scratch"]]
    above = sum(row["scratch_validation"] > _learned(row["baselines_validation"])[1] for row in rows)
    lines.append("")
    lines.append(f"auto skips the scratch model on {len(skipped)} of {len(rows)} runs; misses: "
                 f"{sum(row['miss'] for row in rows)}; the scratch model validates above the best learned baseline "
                 f"on {above} of {len(rows)}; scratch seconds saved: "
                 f"{sum(row['scratch_seconds'] for row in skipped):.0f} of "
                 f"{sum(row['scratch_seconds'] for row in rows):.0f}")
    return "\n".join(lines)


def pipeline_table(result: dict) -> str:
    examples = result["examples"]
    lines = [f"{examples['train']} train / {examples['validation']} validation / {examples['test']} test; shared "
             f"stages (s): " + ", ".join(f"{key} {value}" for key, value in result["seconds"].items()), "",
             "| guard | scratch stage s | evaluate s | whole run s | vs no guard | scratch model | exported "
             "| test macro-F1 | negative transfer | transfer gain |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    names = {"off": "off", "auto": "fallback, scratch: auto", "always": "fallback, scratch: always (full guard)"}
    for mode in ("off", "auto", "always"):
        if mode not in result:
            continue
        run = result[mode]
        gain = f"{run['transfer_gain']:+.3f}" if "transfer_gain" in run else "-"
        lines.append(f"| {names[mode]} | {run['seconds']['scratch']} | {run['seconds']['evaluate']} | "
                     f"{run['run_seconds']} | {run.get('run_over_no_guard', 1.0):.2f}x | "
                     f"{run.get('scratch_model', '-')} | {run['exported_model']} | {run['f1_macro']:.3f} | "
                     f"{run.get('negative_transfer', '-')} | {gain} |")
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results.json")
    results = json.loads(path.read_text())
    if "panel" in results:
        print(panel_table(results["panel"]), end="\n\n")
    for part in ("planted", "cost"):
        if part in results:
            print(f"{part}:\n{pipeline_table(results[part])}", end="\n\n")


if __name__ == "__main__":
    main()
