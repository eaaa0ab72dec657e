"""Print bench/selection results as the Markdown tables of its README.

    .venv/bin/python bench/selection/table.py bench/selection/results.json
"""

from __future__ import annotations

import json
import sys

SCORES = ("logme", "hscore", "linear_probe")


def render(results: dict) -> str:
    tasks = [name for name in results if isinstance(results[name], dict) and "finetuned" in results[name]]
    lines = ["| task | candidate | test accuracy | test macro-F1 | fine-tune s | " +
             " | ".join(SCORES) + " |", "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in SCORES) + " |"]
    for task in tasks:
        entry = results[task]
        for candidate, outcome in entry["finetuned"].items():
            scores = " | ".join(f"{entry['scores'][score][candidate]:.4f}" for score in SCORES)
            lines.append(f"| {task} | {candidate} | {outcome['accuracy']:.4f} | {outcome['f1_macro']:.4f} | "
                         f"{entry['finetune_seconds'][candidate]:.0f} | {scores} |")
    lines += ["", "| task | score | Kendall tau (accuracy) | Kendall tau (macro-F1) | top-1 hit (accuracy) | "
              "scoring time / fine-tuning the largest | / fine-tuning the mean |",
              "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for task in tasks:
        for score in SCORES:
            s = results[task]["summary"][score]
            lines.append(f"| {task} | {score} | {s['kendall_tau_accuracy']:+.2f} | {s['kendall_tau_f1_macro']:+.2f} | "
                         f"{'yes' if s['top1_hit_accuracy'] else 'no'} | {s['score_time_over_largest_finetune']:.2f} | "
                         f"{s['score_time_over_mean_finetune']:.2f} |")
    means = results["mean_kendall_tau"]
    lines += ["", "| score | mean Kendall tau over the 3 tasks (accuracy) | (macro-F1) |", "| --- | ---: | ---: |"]
    lines += [f"| {score} | {means[score]['accuracy']:+.2f} | {means[score]['f1_macro']:+.2f} |" for score in SCORES]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(json.load(open(sys.argv[1], encoding="utf-8"))))
