"""Print bench/scaling's tables (README.md) and draw cost against size (cost.png).

copies_*.json: every contestant, before the kernel choices; kernels_copies_*.json: crosstune with the fused
AdamW and the bf16 math attention kernel against Trainer with group_by_length + bf16=True, re-run side by side.

    .venv/bin/python bench/scaling/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
REVIEWS = 509
# (name, summary key of its seconds per epoch, its test metrics' key); crosstune's ratio is against each
CONTESTANTS = (("crosstune (default)", "crosstune_epoch_s", "crosstune_test"),
               ("crosstune float32", "crosstune_float32_epoch_s", "crosstune_float32_test"),
               ("Trainer", "trainer_epoch_s", "trainer_test"),
               ("Trainer group_by_length", "trainer_grouped_epoch_s", "trainer_grouped_test"),
               ("Trainer group_by_length + bf16=True", "trainer_grouped_bf16_epoch_s", "trainer_grouped_bf16_test"))


def load(prefix: str = "copies") -> list[tuple[int, dict, dict]]:
    """(training examples, report, summary row) per size and depth, smallest size first."""
    rows = []
    for path in sorted(HERE.glob(f"{prefix}_*.json"), key=lambda item: int(item.stem.split("_")[-1])):
        report = json.loads(path.read_text())
        copies = int(path.stem.split("_")[-1])
        rows += [(REVIEWS * (1 + copies), report, row) for row in report["summary"]]
    return rows


def table(rows: list[tuple[int, dict, dict]]) -> None:
    print("| training examples | freeze depth | epochs | " + " | ".join(f"{name} s/epoch" for name, _, _ in
                                                                       CONTESTANTS)
          + " | whole run s (" + " / ".join(name for name, _, _ in CONTESTANTS)
          + ") | peak RSS MiB (crosstune / Trainer) | test macro-F1 (" + " / ".join(name for name, _, _ in CONTESTANTS)
          + ") |")
    print("| --- " * (3 + len(CONTESTANTS) + 3) + "|")
    for size, report, row in rows:
        ours = row["crosstune_epoch_s"]
        cells = []
        for index, (_, key, _) in enumerate(CONTESTANTS):
            if key not in row:
                cells.append("")
            elif index == 0:
                cells.append(f"{ours:.2f} ({row.get('crosstune_precision') or '?'})")
            else:
                cells.append(f"{row[key]:.2f} (**{row[key] / max(ours, 1e-9):.1f}x**)")
        totals = " / ".join(f"{row[key.replace('_epoch_s', '_total_s')]:.0f}" if key in row else "-"
                            for _, key, _ in CONTESTANTS)
        scores = " / ".join(f"{row[test]['f1_macro']:.3f}" if test in row else "-" for _, _, test in CONTESTANTS)
        print(f"| {size:,} | {row['depth']} | {report['finetune']['epochs']} | " + " | ".join(cells)
              + f" | {totals} | {row['crosstune_peak_rss_mib']:.0f} / {row['trainer_peak_rss_mib']:.0f} | {scores} |")


def table_after(rows: list[tuple[int, dict, dict]], before: list[tuple[int, dict, dict]]) -> None:
    """crosstune now against the grouped bf16 Trainer re-run beside it, and against the earlier runs."""
    earlier = {(size, row["depth"]): row for size, _, row in before}
    print("| training examples | epochs | crosstune s/epoch | (before the kernel choices) | Trainer group_by_length "
          "+ bf16=True s/epoch, same run | vs Trainer (earlier run) | vs Trainer group_by_length (earlier run) "
          "| whole run s (crosstune / grouped bf16) | peak RSS MiB (crosstune / grouped bf16) "
          "| test macro-F1 (crosstune / grouped bf16) |")
    print("| --- " * 10 + "|")
    for size, report, row in rows:
        ours, old = row["crosstune_epoch_s"], earlier.get((size, row["depth"]), {})
        peer = row["trainer_grouped_bf16_epoch_s"]
        versus = [f"**{old[key] / ours:.1f}x**" if key in old else "" for key in
                  ("trainer_epoch_s", "trainer_grouped_epoch_s")]
        before_cell = f"{old['crosstune_epoch_s']:.2f} ({old['crosstune_epoch_s'] / ours:.2f}x)" if old else ""
        print(f"| {size:,} | {report['finetune']['epochs']} | {ours:.2f} | {before_cell} | {peer:.2f} "
              f"(**{peer / ours:.2f}x**) | {versus[0]} | {versus[1]} "
              f"| {row['crosstune_total_s']:.0f} / {row['trainer_grouped_bf16_total_s']:.0f} "
              f"| {row['crosstune_peak_rss_mib']:.0f} / {row['trainer_grouped_bf16_peak_rss_mib']:.0f} "
              f"| {row['crosstune_test']['f1_macro']:.3f} / {row['trainer_grouped_bf16_test']['f1_macro']:.3f} |")


def plot(rows: list[tuple[int, dict, dict]], after: list[tuple[int, dict, dict]], out: Path) -> None:
    """Seconds per epoch against training examples, full fine-tuning, one line per contestant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [(size, row) for size, _, row in rows if row["depth"] == 0]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, key, _ in CONTESTANTS:
        points = [(size, row[key]) for size, row in full if key in row]
        if points:
            axes.plot(*zip(*points), marker="o", label=name)
    later = [(size, row) for size, _, row in after if row["depth"] == 0]
    for name, key in (("crosstune now (fused AdamW, bf16 math attention)", "crosstune_epoch_s"),
                      ("Trainer group_by_length + bf16=True, re-run beside it", "trainer_grouped_bf16_epoch_s")):
        points = [(size, row[key]) for size, row in later if key in row]
        if points:
            axes.plot(*zip(*points), marker="s", linestyle="--", label=name)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("training examples (drug reviews + seeded token-level copies)")
    axes.set_ylabel("seconds per epoch (2 CPU cores)")
    axes.set_title("Full fine-tuning of all-MiniLM-L6-v2: cost against size")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    loaded, kernels = load(), load("kernels_copies")
    table(loaded)
    print()
    table_after(kernels, loaded)
    plot(loaded, kernels, HERE / "cost.png")
