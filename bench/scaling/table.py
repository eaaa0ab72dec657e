"""Print bench/scaling's tables (README.md) and draw cost against size (cost.png).

copies_*.json: every contestant, before the kernel choices (AMD EPYC); kernels_copies_*.json: crosstune with the
fused AdamW and the bf16 math attention kernel against the Trainer setups re-run beside it (an Intel Xeon with
AMX: ratios hold within a run, not across the two machines).

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


def table_after(rows: list[tuple[int, dict, dict]]) -> None:
    """crosstune with the kernel choices against the Trainer setups run beside it (same machine, same run)."""
    print("| training examples | epochs | crosstune s/epoch | " + " | ".join(f"{name} s/epoch" for name, _, _ in
                                                                   CONTESTANTS[2:])
          + " | whole run s (crosstune / " + " / ".join(name for name, _, _ in CONTESTANTS[2:])
          + ") | peak RSS MiB (crosstune / Trainer setups) | test macro-F1 (crosstune / "
          + " / ".join(name for name, _, _ in CONTESTANTS[2:]) + ") |")
    print("| --- " * (3 + len(CONTESTANTS[2:]) + 3) + "|")
    for size, report, row in rows:
        ours = row["crosstune_epoch_s"]
        present = [key for _, key, _ in CONTESTANTS[2:] if key in row]
        cells = [f"{row[key]:.2f} (**{row[key] / max(ours, 1e-9):.2f}x**)" if key in row else "-"
                 for _, key, _ in CONTESTANTS[2:]]
        totals = " / ".join(f"{row[key.replace('_epoch_s', '_total_s')]:.0f}" if key in row else "-"
                            for _, key, _ in CONTESTANTS[2:])
        memory = " / ".join(f"{row[key.replace('_epoch_s', '_peak_rss_mib')]:.0f}" for key in present)
        scores = " / ".join(f"{row[test]['f1_macro']:.3f}" if test in row else "-" for _, _, test in CONTESTANTS[2:])
        print(f"| {size:,} | {report['finetune']['epochs']} | {ours:.2f} | " + " | ".join(cells)
              + f" | {row['crosstune_total_s']:.0f} / {totals} | {row['crosstune_peak_rss_mib']:.0f} / {memory} "
              f"| {row['crosstune_test']['f1_macro']:.3f} / {scores} |")


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
            axes.plot(*zip(*points), marker="o", label=f"{name}, EPYC, before the kernel choices")
    later = [(size, row) for size, _, row in after if row["depth"] == 0]
    for name, key in (("crosstune now (fused AdamW, bf16 math attention), Xeon", "crosstune_epoch_s"),
                      ("Trainer group_by_length + bf16=True, beside it, Xeon", "trainer_grouped_bf16_epoch_s")):
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
    table_after(kernels)
    plot(loaded, kernels, HERE / "cost.png")
