"""bench/selection/results.json as the README's tables: per task the candidates' scores and fine-tuned test macro-F1
(mean over seeds), then per score Kendall tau, top-1 hit, regret and scoring time over fine-tuning time.

    .venv/bin/python bench/selection/table.py [bench/selection/results.json]

- Kendall tau (tau-b) between a score's ranking of the candidates and their mean fine-tuned test macro-F1;
- top-1 hit: the score's best candidate is the best fine-tuned one (a tie within 0.5 points of the best counts);
- regret: points of test macro-F1 lost by fine-tuning the score's top-1 instead of the best candidate;
- time: extracting every candidate's features and scoring them, over the seconds of fine-tuning one candidate
  (attach-head + cache + finetune, mean over candidates and seeds: the issue's yardstick), over fine-tuning the
  score's pick, and over fine-tuning them all (what ranking by fine-tuning costs, the alternative a score replaces).

LEEP and NCE only exist for candidates that keep a pretrained source classifier; their tau, hit and regret are
over those candidates.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SCORES = ("logme", "hscore", "linear_probe", "knn", "leep", "nce")
TIE = 0.005  # a top-1 within half a point of the best fine-tuned candidate counts as a hit


def kendall_tau(first: list[float], second: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(first, second).statistic)


def finetuned(entry: dict, metric: str = "f1_macro") -> dict[str, dict[str, float]]:
    """Per candidate: mean and standard deviation of the test metric over seeds, seeds run, mean seconds."""
    out: dict[str, dict[str, float]] = {}
    for candidate in dict.fromkeys(run["candidate"] for run in entry["runs"]):
        runs = [run for run in entry["runs"] if run["candidate"] == candidate]
        values = [run[metric] for run in runs]
        out[candidate] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                          "seeds": len(values), "seconds": statistics.mean(run["seconds"] for run in runs),
                          "accuracy": statistics.mean(run["accuracy"] for run in runs)}
    return out


def summarise(entry: dict) -> dict[str, dict[str, float]]:
    tuned = finetuned(entry)
    mean_seconds = statistics.mean(value["seconds"] for value in tuned.values())
    summary = {}
    for score in SCORES:
        ranked = [candidate for candidate in tuned if score in entry["scores"].get(candidate, {})]
        if len(ranked) < 3:
            continue
        values = [entry["scores"][candidate][score] for candidate in ranked]
        outcome = [tuned[candidate]["mean"] for candidate in ranked]
        pick = ranked[values.index(max(values))]
        best = max(outcome)
        seconds = sum(entry["score_seconds"][candidate]["extract"] + entry["score_seconds"][candidate][score]
                      for candidate in ranked)
        summary[score] = {"tau": kendall_tau(values, outcome), "hit": tuned[pick]["mean"] >= best - TIE,
                          "regret": 100 * (best - tuned[pick]["mean"]), "pick": pick, "candidates": len(ranked),
                          "time_over_finetune": seconds / mean_seconds, "seconds": seconds,
                          "time_over_pick": seconds / tuned[pick]["seconds"],
                          "time_over_all": seconds / sum(tuned[candidate]["seconds"] for candidate in ranked)}
    return summary


def render(results: dict) -> str:
    tasks = [name for name, entry in results.items() if isinstance(entry, dict) and entry.get("runs")]
    lines = ["| task | candidate | test macro-F1 (mean ± std, seeds) | test accuracy | fine-tune s | "
             + " | ".join(SCORES) + " |",
             "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in SCORES) + " |"]
    for task in tasks:
        entry, tuned = results[task], finetuned(results[task])
        for candidate, outcome in tuned.items():
            given = entry["scores"].get(candidate, {})
            scores = " | ".join(f"{given[score]:.3f}" if score in given else "" for score in SCORES)
            lines.append(f"| {task} | {candidate} | {outcome['mean']:.3f} ± {outcome['std']:.3f} "
                         f"({outcome['seeds']}) | {outcome['accuracy']:.3f} | {outcome['seconds']:.0f} | {scores} |")
    lines += ["", "| task | score | Kendall tau | top-1 hit | its pick | regret (points) | scoring time / "
              "fine-tuning one (mean) | / fine-tuning its pick | / fine-tuning all |",
              "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    summaries = {task: summarise(results[task]) for task in tasks}
    for task in tasks:
        for score, row in summaries[task].items():
            lines.append(f"| {task} | {score} | {row['tau']:+.2f} | {'yes' if row['hit'] else 'no'} | {row['pick']} "
                         f"| {row['regret']:.1f} | {row['time_over_finetune']:.3f} | {row['time_over_pick']:.3f} "
                         f"| {row['time_over_all']:.3f} |")
    lines += ["", "| score | tasks | mean Kendall tau | top-1 hits | mean regret (points) | scoring time / "
              "fine-tuning one (mean, worst task) | / fine-tuning all (mean, worst) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for score in SCORES:
        rows = [summaries[task][score] for task in tasks if score in summaries[task]]
        if rows:
            tau = statistics.mean(row["tau"] for row in rows)
            regret = statistics.mean(row["regret"] for row in rows)
            lines.append(f"| {score} | {len(rows)} | {tau:+.2f} | {sum(row['hit'] for row in rows)}/{len(rows)} | "
                         f"{regret:.1f} | {statistics.mean(row['time_over_finetune'] for row in rows):.3f}, "
                         f"{max(row['time_over_finetune'] for row in rows):.3f} | "
                         f"{statistics.mean(row['time_over_all'] for row in rows):.3f}, "
                         f"{max(row['time_over_all'] for row in rows):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results.json")
    print(render(json.loads(path.read_text(encoding="utf-8"))))
