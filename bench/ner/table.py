"""Print bench/ner/results.json as the README's tables: test entity F1 (mean ± std over seeds) and seconds per
training epoch (each run's median) per contestant, Trainer's epoch time as a multiple of crosstune's, and the
learning curve."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workdir import machines_line  # noqa: E402

RESULTS = Path(__file__).with_name("results.json")
NAMES = {"crosstune": "crosstune (the example's recipe, float32)", "crosstune_bf16": "crosstune, bf16 autocast",
         "crosstune_all_blocks": "crosstune, every block trainable (float32)", "trainer": "Trainer (documented)",
         "trainer_grouped_bf16": "Trainer + group_by_length + bf16", "crf": "CRF (sklearn-crfsuite, c1 = c2 = 0.1)"}


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.mean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def _epoch(run: dict) -> float | None:
    """The run's median epoch (one epoch slowed by something else on the machine does not move it), or its mean
    where only the total training time was recorded."""
    epochs = run.get("epoch_seconds")
    if epochs:
        return statistics.median(epochs)
    return run["training_seconds"] / run["epochs"] if run.get("training_seconds") else None


def main(path: Path = RESULTS) -> None:
    results = json.loads(path.read_text())
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in results["runs"]:
        groups[(run["data"], run["backbone"], run["size"], run["tool"])].append(run)
    print(f"Machine: {machines_line(results)}.\n")
    print("| data | backbone | contestant | seeds | test entity F1 | s / epoch | Trainer's epoch ÷ this | "
          "Trainer grouped + bf16 ÷ this |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (data, backbone, size, tool), runs in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1],
                                                                                       item[0][2] or 0, item[0][3])):
        if size:
            continue
        epoch = [value for value in map(_epoch, runs) if value]
        ratios = []
        for peer_tool in ("trainer", "trainer_grouped_bf16"):
            peer = [value for value in map(_epoch, groups.get((data, backbone, size, peer_tool), [])) if value]
            ratios.append(f"{statistics.mean(peer) / statistics.mean(epoch):.2f}" if epoch and peer else "—")
        print(f"| {data} | {backbone} | {NAMES.get(tool, tool)} | {len(runs)} | "
              f"{_spread([run['test']['entity_f1'] for run in runs])} | "
              f"{f'{statistics.mean(epoch):.0f}' if epoch else '—'} | {' | '.join(ratios)} |")
    curve = {key: runs for key, runs in groups.items() if key[2]}
    if curve:
        print("\n| data | backbone | training sentences | contestant | seeds | test entity F1 |")
        print("| --- | --- | --- | --- | --- | --- |")
        for (data, backbone, size, tool), runs in sorted(curve.items(), key=lambda item: (item[0][2], item[0][3])):
            print(f"| {data} | {backbone} | {size} | {NAMES.get(tool, tool)} | {len(runs)} | "
                  f"{_spread([run['test']['entity_f1'] for run in runs])} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
