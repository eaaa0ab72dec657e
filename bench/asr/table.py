"""Print bench/asr/results.json as the README's table: test WER and CER on the unseen speakers (mean ± std over
seeds), george's and lucas's WER, seconds per training epoch (each run's median), the recipe's epoch as a
multiple of this one's, the cache's one pass and the worker's peak resident memory."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workdir import machines_line  # noqa: E402

RESULTS = Path(__file__).with_name("results.json")
ORDER = ("zero_shot_30s", "zero_shot", "crosstune_decoder", "crosstune_top2", "crosstune_full", "trainer")
NAMES = {"zero_shot_30s": "zero-shot, Whisper's 30 s window (no training)",
         "zero_shot": "zero-shot at crosstune's window (no training)",
         "crosstune_decoder": "crosstune: encoder frozen and cached, decoder trained (the example)",
         "crosstune_top2": "crosstune: encoder blocks 1-2 frozen and cached, blocks 3-4 + decoder trained",
         "crosstune_full": "crosstune: everything trained",
         "trainer": "Seq2SeqTrainer, the documented recipe (30 s padding, everything trained)"}


def _spread(values: list[float], digits: int = 4) -> str:
    if not values:
        return "—"
    mean = statistics.mean(values)
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _epoch(run: dict) -> float | None:
    """The run's median epoch: one epoch slowed by something else on the machine does not move it."""
    epochs = run.get("epoch_seconds")
    return statistics.median(epochs) if epochs else None


def main(path: Path = RESULTS) -> None:
    results = json.loads(path.read_text())
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in results["runs"]:
        groups[run["tool"]].append(run)
    recipe = [value for value in map(_epoch, groups.get("trainer", [])) if value]
    print(f"Machine: {machines_line(results)}, float32.\n")
    print("| contestant | seeds | test WER | test CER | george WER | lucas WER | s / epoch | recipe's epoch ÷ this | "
          "cache pass, s | peak RSS, GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for tool in (name for name in ORDER if name in groups):
        runs = groups[tool]
        epoch = [value for value in map(_epoch, runs) if value]
        ratio = f"{statistics.mean(recipe) / statistics.mean(epoch):.1f}" if epoch and recipe else "—"
        cache = [run["cache_seconds"] for run in runs if run.get("cache_seconds")]
        print(f"| {NAMES[tool]} | {len(runs)} | {_spread([run['test']['wer'] for run in runs])} | "
              f"{_spread([run['test']['cer'] for run in runs])} | "
              f"{_spread([run['test'].get('george_wer', float('nan')) for run in runs], 3)} | "
              f"{_spread([run['test'].get('lucas_wer', float('nan')) for run in runs], 3)} | "
              f"{f'{statistics.mean(epoch):.1f}' if epoch else '—'} | {ratio} | "
              f"{f'{statistics.mean(cache):.0f}' if cache else '—'} | "
              f"{max(run['peak_rss_mib'] for run in runs) / 1024:.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
