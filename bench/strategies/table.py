"""Print bench/strategies/results.json as the markdown table in bench/strategies/README.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"head_only": "head only (`freeze.depth: all`)", "full": "full fine-tuning",
         "gradual_llrd": "gradual unfreezing + layer-wise decay + STLR", "l2sp": "full + L2-SP",
         "bss": "full + BSS", "lora": "LoRA r=8 (query, value)"}

results = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results.json")).read_text())
print("| strategy | text: test macro-F1 | text: accuracy | text: trainable parameters | image: test macro-F1 "
      "| image: accuracy | image: trainable parameters |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for key, name in NAMES.items():
    cells = []
    for dataset in ("text", "image"):
        entry = results.get(dataset, {}).get(key)
        if entry is None:
            cells += ["not run"] * 3
        elif "skipped" in entry:
            cells += ["n/a"] * 3
        else:
            cells += [f"{entry['f1_macro_mean']:.3f} ± {entry['f1_macro_std']:.3f}",
                      f"{entry['accuracy_mean']:.3f} ± {entry['accuracy_std']:.3f}",
                      f"{entry['runs'][0]['trainable_parameters']:,}"]
    print(f"| {name} | " + " | ".join(cells) + " |")
