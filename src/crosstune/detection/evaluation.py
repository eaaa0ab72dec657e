"""The evaluate stage for a detector: test mAP overall and per class, the counting error, the guard, the
predictions table and the worst test images drawn.

The guard compares three detectors of one architecture (:mod:`crosstune.evaluation.guard`'s reasoning):
``transfer_gain`` = fine-tuned minus scratch (random backbone) test mAP, ``finetuning_gain`` = fine-tuned minus
probe (frozen backbone); with ``evaluate.guard: fallback`` the exported detector is whichever validates with the
best mAP (ties: fine-tuned, then probe).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from crosstune.errors import ArtifactError

logger = logging.getLogger(__name__)

WORST_IMAGES = 6  # drawn in the examples picture, the most wrong first
DRAW_THRESHOLD = 0.5  # predictions drawn (and counted as found) from this score


def evaluate_detector(model_dir: str, encoded_dir: str, prepared_dir: str, metrics_path: str, predictions_path: str,
                      examples_path: str, params: Any, base: Any, scratch_dir: str | None,
                      probe_dir: str | None) -> dict[str, Any]:
    """Score the fine-tuned detector (and with the guard the probe and scratch ones) on test; write the metrics,
    the predictions table (per image: true and predicted boxes as JSON, counts, errors) and the worst images."""
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared_dir import read_split
    from crosstune.detection.encoding import to_image_pixels
    from crosstune.detection.inference import detect_split
    from crosstune.evaluation.guard import (
        WHAT_TO_TRY,
        choose_export,
        flag_negative_transfer,
        guard_model_dir,
        refuse_baselines,
    )
    from crosstune.io import read_json, write_metrics, write_metrics_csv
    from crosstune.runtime import setup
    from crosstune.tasks.registry import TASKS
    from crosstune.transfer_model.settings import GUARD_RECORD
    from crosstune.transfer_model.storage import load_transfer_model

    refuse_baselines(params.baselines, "a detector is compared with the same detector on a frozen backbone and from "
                                       "random weights (evaluate.guard)")
    device = setup(base)
    model, config = load_transfer_model(model_dir)
    task, labels = TASKS.get(config["task"]), list(config["labels"])
    splits = {name: load_any_split(Path(encoded_dir) / f"{name}.safetensors") for name in ("validation", "test")}
    batching = batching_for(config, params.batch_size, 0)
    candidates = {"finetuned": model}
    if params.guard != "off":
        for name, directory in (("probe", probe_dir), ("scratch", scratch_dir)):
            directory = guard_model_dir(directory, name, params.guard,
                                        f"the fine-tuned detector with the {name} stage's")
            record = Path(directory) / GUARD_RECORD
            if name == "scratch" and record.is_file() and read_json(record).get("guard") == "off":
                raise ArtifactError(f"{directory}: the scratch stage ran with evaluate.guard: off; run `dvc repro "
                                    f"scratch` to train it.")
            candidates[name] = load_transfer_model(directory)[0]
    found: dict[str, list[dict[str, Any]]] = {}
    tested: dict[str, dict[str, float]] = {}
    validated: dict[str, float] = {}
    for name, candidate in candidates.items():
        candidate.to(device)
        found[name], truth, _ = detect_split(candidate, splits["test"], batching, device)
        tested[name] = task.score_detections(found[name], truth, labels, per_class=name == "finetuned")
        if params.guard != "off":
            validation_found, validation_truth, _ = detect_split(candidate, splits["validation"], batching, device)
            validated[name] = task.score_detections(validation_found, validation_truth, labels)[task.headline]
        candidate.to("cpu")
    metrics: dict[str, Any] = dict(tested["finetuned"])
    exported = "finetuned"
    if params.guard != "off":
        headline = task.headline
        guard: dict[str, Any] = {"guard": params.guard, "scratch_model": "trained"}
        gain = task.gain(headline, tested["finetuned"][headline], tested["scratch"][headline])
        guard.update(transfer_gain=gain, negative_transfer=flag_negative_transfer(
            gain, headline, tested["finetuned"][headline], tested["scratch"][headline]))
        guard["finetuning_gain"] = task.gain(headline, tested["finetuned"][headline], tested["probe"][headline])
        for key in task.summary_metrics:
            guard.update({f"{name}_{key}": tested[name][key] for name in candidates})
        guard.update({f"{name}_validation_{headline}": value for name, value in validated.items()})
        if guard["negative_transfer"]:
            guard["negative_transfer_advice"] = WHAT_TO_TRY
        if params.guard == "fallback":
            exported = choose_export(validated, task)
            if exported != "finetuned":
                logger.warning("guard: fallback: the %s detector validates better than the fine-tuned one (mAP %.4f vs "
                               "%.4f); it is the exported model", exported, validated[exported],
                               validated["finetuned"])
                metrics = task.score_detections(found[exported], truth, labels, per_class=True)
        metrics.update(guard)
    metrics["exported_model"] = exported
    test_frame = read_split(prepared_dir, "test")
    metrics["test_size"] = len(test_frame)
    shown = to_image_pixels(found[exported], splits["test"].scales)
    truth_pixels = to_image_pixels(truth, splits["test"].scales)
    table = _predictions_table(test_frame, shown, truth_pixels, labels)
    _worst_images_figure(examples_path, table, shown, truth_pixels, labels)
    write_metrics(metrics_path, metrics)
    write_metrics_csv(predictions_path, table)
    logger.info("test mAP %.4f, mAP@.5 %.4f, counting error %.2f per image and class (%s detector)%s",
                metrics["map"], metrics["map_50"], metrics["count_mae"], exported,
                f"; transfer gain {metrics['transfer_gain']:+.4f}" if "transfer_gain" in metrics else "")
    return metrics


def _predictions_table(test_frame: Any, found: list[dict[str, Any]], truth: list[dict[str, Any]],
                       labels: list[str]) -> Any:
    """One row per test image: its place in the split, path, true boxes (the prepared JSON), the predicted boxes
    scoring at least :data:`DRAW_THRESHOLD` (JSON, image pixels; mAP reads every box, a person these), per-class
    true and predicted counts, and its errors (missed plus spurious boxes), the worst first."""
    from crosstune.detection.drawing import image_errors
    from crosstune.tasks.detection import boxes_records

    table = test_frame[["image", "label", "width", "height"]].copy().reset_index(drop=True)
    table.insert(0, "row", range(len(table)))  # the image's place in the test split
    table["predicted"] = [json.dumps([record for record in boxes_records(item, labels)
                                      if record["score"] >= DRAW_THRESHOLD], separators=(",", ":")) for item in found]
    for index, name in enumerate(labels, start=1):
        table[f"true_{name}"] = [int((item["labels"] == index).sum()) for item in truth]
        table[f"predicted_{name}"] = [int(((item["labels"] == index) & (item["scores"] >= DRAW_THRESHOLD)).sum())
                                      for item in found]
    table["errors"] = [image_errors(true_boxes, predicted, DRAW_THRESHOLD) for true_boxes, predicted
                       in zip(truth, found)]
    return table.sort_values("errors", ascending=False, kind="stable").reset_index(drop=True)


def _worst_images_figure(path: str | Path, table: Any, found: list[dict[str, Any]], truth: list[dict[str, Any]],
                         labels: list[str]) -> None:
    """The :data:`WORST_IMAGES` most wrong test images (``table`` is sorted so), true boxes thin (red: missed),
    predictions thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crosstune.detection.drawing import draw_boxes
    from crosstune.io import atomic_path

    worst = table.head(WORST_IMAGES)
    columns = min(3, max(len(worst), 1))
    rows = max(1, -(-len(worst) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (_, row) in zip(axes.flat, worst.iterrows()):
        position = int(row["row"])
        axis.imshow(draw_boxes(row["image"], truth[position], found[position], labels, DRAW_THRESHOLD))
        axis.set_title(f"{Path(row['image']).name}: {int(row['errors'])} wrong boxes", fontsize=9)
    figure.suptitle("Worst test images: true boxes thin (red: missed), predictions thick with class and score",
                    fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as staging:
        figure.savefig(staging, format="png", dpi=80)
    plt.close(figure)
