"""bench/freeze/results.json as the README's tables: per task the test macro-F1 at each swept freeze depth (mean ±
std over seeds), the per-block transferability, and how far ``freeze.depth: auto``'s choice lands from the best
depth, beside choosing the depth by the sweep's own validation scores.

    .venv/bin/python bench/freeze/table.py [bench/freeze/results.json]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from crosstune.freezing.auto_depth import recommend_depth  # noqa: E402


def by_depth(entry: dict) -> dict[str, dict[str, float]]:
    """Per swept depth (as text): mean and std of test macro-F1 and validation macro-F1, seconds, seeds."""
    out: dict[str, dict[str, float]] = {}
    swept = sorted({str(run["depth"]) for run in entry["runs"]}, key=lambda depth: (depth == "all", int(depth) if
                                                                                      depth != "all" else 0))
    for depth in swept:
        runs = [run for run in entry["runs"] if str(run["depth"]) == depth]
        tests = [run["f1_macro"] for run in runs]
        out[depth] = {"mean": statistics.mean(tests), "std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                      "validation": statistics.mean(run["validation_f1_macro"] for run in runs),
                      "seconds": statistics.mean(run["seconds"] for run in runs), "seeds": len(runs),
                      "trainable": runs[0]["trainable_parameters"]}
    return out


def summarise(entry: dict) -> dict:
    depths = by_depth(entry)
    complete = {depth: row for depth, row in depths.items() if row["seeds"] == max(r["seeds"] for r in depths.values())}
    best = max(complete, key=lambda depth: complete[depth]["mean"])
    by_validation = max(complete, key=lambda depth: complete[depth]["validation"])
    blocks = entry["block_scores"]
    auto = str(recommend_depth(blocks["scores"], blocks["score"]).depth)
    gap = 100 * (complete[best]["mean"] - complete[auto]["mean"]) if auto in complete else None
    return {"best": best, "auto": auto, "gap": gap, "by_validation": by_validation,
            "validation_gap": 100 * (complete[best]["mean"] - complete[by_validation]["mean"]),
            "full_gap": 100 * (complete[best]["mean"] - complete["0"]["mean"]) if "0" in complete else None}


def render(results: dict) -> str:
    lines = []
    for task, entry in results.items():
        depths = by_depth(entry)
        blocks = entry["block_scores"]
        summary = summarise(entry)
        lines += [f"**{task}** ({entry['backbone']}; {blocks['score']} after the stem and each block: "
                  + ", ".join("n/a" if value is None else f"{value:.3f}" for value in blocks["scores"]) + ")", "",
                  "| freeze.depth | test macro-F1 | validation macro-F1 | trainable parameters | seconds | |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for depth, row in depths.items():
            marks = [name for name, chosen in (("best", summary["best"]), ("auto", summary["auto"]),
                                               ("best on validation", summary["by_validation"])) if chosen == depth]
            lines.append(f"| {depth} | {row['mean']:.3f} ± {row['std']:.3f} ({row['seeds']}) | "
                         f"{row['validation']:.3f} | {row['trainable']:,} | {row['seconds']:.0f} | "
                         f"{', '.join(marks)} |")
        lines.append("")
    lines += ["| task | best depth | auto | auto's loss (points) | best on validation | its loss (points) | "
              "full fine-tuning's loss (points) |", "| --- | --- | --- | ---: | --- | ---: | ---: |"]
    gaps = []
    for task, entry in results.items():
        s = summarise(entry)
        gaps.append(s["gap"])
        auto_loss = "not swept" if s["gap"] is None else f"{s['gap']:.1f}"
        full_loss = "" if s["full_gap"] is None else f"{s['full_gap']:.1f}"
        lines.append(f"| {task} | {s['best']} | {s['auto']} | {auto_loss} | {s['by_validation']} | "
                     f"{s['validation_gap']:.1f} | {full_loss} |")
    known = [gap for gap in gaps if gap is not None]
    if known:
        lines += ["", f"Mean loss of auto's depth against the best swept depth: {statistics.mean(known):.2f} points "
                      f"over {len(known)} tasks."]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results.json")
    print(render(json.loads(path.read_text(encoding="utf-8"))))
