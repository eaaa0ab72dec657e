"""Print bench/recipes/results.json (and setfit.json) as the README's table: mean ± std over seeds per cell;
then selection_noise.json's rules per task (the epoch a run keeps) with what the guard's fallback exports.

    .venv/bin/python bench/recipes/table.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = [("full", "full fine-tuning from a random head (`head_init: random`)"),
        ("lp_ft", "LP-FT (`head_init: probe`)"),
        ("fallback(full)", "guard fallback after full fine-tuning (exported model)"),
        ("fallback(lp_ft)", "guard fallback after LP-FT (exported model)"),
        ("head_only", "head only, SGD (`freeze.depth: all`)"),
        ("probe", "linear probe (probe stage, closed form)"),
        ("scratch", "scratch (random initialisation, same budget)")]


def cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def goal_row(task: str, runs: list[dict], baselines: list[str]) -> str:
    """The issue's goal on one task: the default recipe's mean test macro-F1 is at least the best mean of
    its baselines and the probe, within one seed standard deviation (the default's)."""
    default = [run["fallback(full)"]["f1_macro"] for run in runs]
    rivals = {key: statistics.mean(run[key]["f1_macro"] for run in runs)
              for key in ["probe", *baselines] if all(key in run for run in runs)}
    best = max(rivals, key=rivals.get)
    std = statistics.stdev(default) if len(default) > 1 else 0.0
    gap = statistics.mean(default) - rivals[best]
    return (f"| {task} | {cell(default)} | {best.replace('baseline_', '')} {rivals[best]:.3f} | {gap:+.3f} | "
            f"{std:.3f} | {'yes' if gap >= -std else 'no'} |")


def main() -> None:
    results = json.loads((HERE / "results.json").read_text())
    setfit_path = HERE / "setfit.json"
    setfit = json.loads(setfit_path.read_text()) if setfit_path.exists() else {}
    tasks = list(results)
    baselines = sorted({key for task in tasks for run in results[task]["runs"] for key in run
                        if key.startswith("baseline_")})
    print("| model | " + " | ".join(f"{task}: test macro-F1" for task in tasks) + " |")
    print("| --- |" + " --- |" * len(tasks))
    for key, words in ROWS + [(name, name.replace("baseline_", "baseline: ")) for name in baselines]:
        row = [cell([run[key]["f1_macro"] for run in results[task]["runs"] if key in run]) for task in tasks]
        print(f"| {words} | " + " | ".join(row) + " |")
    for name, entry in setfit.items():
        row = [cell([run["f1_macro"] for run in entry["runs"]]) if task == "text" else "n/a" for task in tasks]
        print(f"| SetFit 1.2.0, {name.split('_')[1]} head, {entry['max_steps']} steps | " + " | ".join(row) + " |")
    print()
    print("| task | default (fallback after full fine-tuning) | best of the baselines and the probe | "
          "default - best | seed std | goal met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for task in tasks:
        print(goal_row(task, results[task]["runs"], baselines))
    print()
    for task in tasks:
        runs = results[task]["runs"]
        chosen = {recipe: [run[f"fallback({recipe})"]["chose"] for run in runs] for recipe in ("full", "lp_ft")}
        seconds = {key: statistics.mean(run["seconds"][key] for run in runs) for key in runs[0]["seconds"]}
        print(f"- {task} ({len(runs)} seeds): fallback chose {chosen}; mean seconds "
              + ", ".join(f"{key} {value:.0f}" for key, value in seconds.items()))
    print()
    selection_table()


SELECTION_RULES = [("best_f1", "best validation macro-F1 (`select_window: 1`)"),
                   ("smoothed_f1", "smoothed over 3 epochs (`select_window: 3`, the default)"),
                   ("last", "the last epoch"), ("best_loss", "lowest validation loss"),
                   ("average_last_2", "mean of the last 2 epochs' weights"), ("oracle", "best epoch on test (ceiling)")]


def selection_table() -> None:
    """Per task: each rule's test macro-F1 of the fine-tuned model (mean ± std), and the fallback's."""
    path = HERE / "selection_noise.json"
    if not path.exists():
        return
    study = {task: entry["head_init_random"] for task, entry in json.loads(path.read_text()).items()
             if "summary" in entry.get("head_init_random", {})}
    tasks = list(study)
    print("| rule: fine-tuned model (exported by the fallback) | " + " | ".join(tasks) + " |")
    print("| --- |" + " --- |" * len(tasks))
    for rule, words in SELECTION_RULES:
        cells = []
        for task in tasks:
            row = study[task]["summary"][rule]
            text = f"{row['test_f1_macro_mean']:.3f} ± {row['test_f1_macro_std']:.3f}"
            if "fallback" in row and rule != "oracle":
                text += f" ({row['fallback']['test_f1_macro_mean']:.3f})"
            cells.append(text)
        print(f"| {words} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
