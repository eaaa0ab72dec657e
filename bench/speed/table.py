"""Print bench/speed/results.json as the markdown table in bench/README.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results.json"))
report = json.loads(path.read_text())
print("| freeze depth | crosstune s/epoch | Trainer s/epoch | **speed-up per epoch** | crosstune one-time cache s "
      "| whole run s (crosstune / Trainer) | to the same validation accuracy s (crosstune / Trainer) "
      "| peak RSS MiB (crosstune / Trainer) | test macro-F1 (crosstune / Trainer) | test accuracy (crosstune / Trainer) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for row in report["summary"]:
    reach = (f"{row['crosstune_time_to_target_s']:.1f} / {row['trainer_time_to_target_s']:.1f} "
             f"(acc {row['target_validation_accuracy']:.3f})"
             if row["crosstune_time_to_target_s"] and row["trainer_time_to_target_s"] else "n/a")
    print(f"| {row['depth']} | {row['crosstune_epoch_s']:.2f} | {row['trainer_epoch_s']:.2f} "
          f"| **{row['epoch_speedup']:.1f}x** | {row['crosstune_cache_s']:.1f} "
          f"| {row['crosstune_total_s']:.0f} / {row['trainer_total_s']:.0f} ({row['total_speedup']:.2f}x) | {reach} "
          f"| {row['crosstune_peak_rss_mib']:.0f} / {row['trainer_peak_rss_mib']:.0f} "
          f"| {row['crosstune_test']['f1_macro']:.3f} / {row['trainer_test']['f1_macro']:.3f} "
          f"| {row['crosstune_test']['accuracy']:.3f} / {row['trainer_test']['accuracy']:.3f} |")
for suffix, name in (("grouped", "group_by_length"), ("grouped_bf16", "group_by_length + bf16=True")):
    if not any(f"trainer_{suffix}_epoch_s" in row for row in report["summary"]):
        continue
    print()
    print(f"| freeze depth | crosstune s/epoch | Trainer, {name}, s/epoch | speed-up per epoch "
          f"| test macro-F1 (crosstune / Trainer, {name}) |")
    print("| --- | --- | --- | --- | --- |")
    for row in report["summary"]:
        print(f"| {row['depth']} | {row['crosstune_epoch_s']:.2f} | {row[f'trainer_{suffix}_epoch_s']:.2f} "
              f"| **{row[f'epoch_speedup_vs_{suffix}']:.1f}x** "
              f"| {row['crosstune_test']['f1_macro']:.3f} / {row[f'trainer_{suffix}_test']['f1_macro']:.3f} |")
