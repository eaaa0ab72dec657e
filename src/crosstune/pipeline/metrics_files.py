"""The pipeline's metrics files, and the one dvc.yaml declares as metrics.

`dvc metrics show` prints every declared file's keys as the columns of one table. Declaring all of these made it
about 2,000 characters wide (the test split's per-class scores, baselines and guard comparisons, the backbone's
facts, the per-block scores), so dvc.yaml declares only :data:`SUMMARY`, the headline test metrics, and the rest
are outputs committed to git like it (``cache: false``). They are read by name: the report and the rerun check
pass them to ``dvc metrics diff --targets``, the experiment commands read them from each experiment's commit, and
a user runs ``dvc metrics show metrics/eval.json`` or ``dvc metrics diff main --targets metrics/eval.json``.
tests/test_dependencies.py keeps :data:`SUMMARY` and :data:`FILES` equal to dvc.yaml's.
"""

from __future__ import annotations

SUMMARY = "metrics/summary.json"  # the headline: the task's summary test metrics and the exported model
TEST = "metrics/eval.json"  # the test split in full: per class, baselines, the guard's comparisons
TRAINING = "metrics/finetune/metrics.json"  # dvclive's summary of fine-tuning: the kept epoch's validation scores
BACKBONE = "metrics/backbone.json"  # the backbone's record: name, source, size, tokens per split

# Every metrics file but the summary (which repeats some of the first), with the title the report gives it, in the
# report's order.
FILES: dict[str, str] = {
    TEST: "Test split",
    TRAINING: "Fine-tuning",
    "metrics/freeze.json": "Freezing",
    "metrics/probe.json": "Linear probe (guard)",
    BACKBONE: "Backbone",
    "metrics/selection.json": "Backbone selection",
}
