"""Detection scores: COCO mean average precision and the counting error a haematology user reads.

**mAP** (Lin et al. 2014, https://arxiv.org/abs/1405.0312; computed by torchmetrics' ``MeanAveragePrecision``
on pycocotools, the COCO reference code): for each class, the area under the 101-point interpolated
precision-recall curve of the detections ranked by score, a detection counting as correct when its IoU with
an unmatched true box of its class reaches the threshold t; AP = mean over t in {0.50, 0.55, ..., 0.95}
(``map``, the headline), or at t = 0.5 alone (``map_50``, Pascal VOC's measure); mAP = mean over classes.

**Counting error**: per image and class, the detections scoring at least ``count_threshold`` against the true
boxes: ``count_mae`` = mean |predicted - true| over images (and classes), ``count_bias`` = mean (predicted -
true): below zero the model undercounts.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

COUNT_THRESHOLD = 0.5  # a detection this confident counts as a cell


def detection_scores(detections: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
                     classes: Sequence[str], count_threshold: float = COUNT_THRESHOLD) -> dict[str, Any]:
    """Scores of ``detections`` (per image: ``boxes`` (N, 4) XYXY pixels, ``scores`` (N,), ``labels`` (N,) in
    1..len(classes)) against ``targets`` (``boxes``, ``labels``). Returns the overall scores and ``per_class``:
    class name -> its AP, AP at IoU 0.5, count error and bias, and how many true boxes it has."""
    from torchmetrics.detection import MeanAveragePrecision

    found = [{"boxes": item["boxes"].detach().float(), "scores": item["scores"].detach().float(),
              "labels": item["labels"].long()} for item in detections]
    truth = [{"boxes": item["boxes"].float(), "labels": item["labels"].long()} for item in targets]
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools",
                                  extended_summary=True)
    metric.update(found, truth)
    result = metric.compute()
    per_class_ap = _per_class(result["map_per_class"], result["classes"])
    per_class_ap50 = _per_class(_ap_at_first_threshold(result["precision"]), result["classes"])
    errors = torch.zeros(len(targets), len(classes))
    for row, (image_found, image_truth) in enumerate(zip(found, truth)):
        confident = image_found["labels"][image_found["scores"] >= count_threshold]
        for index in range(len(classes)):
            errors[row, index] = float((confident == index + 1).sum() - (image_truth["labels"] == index + 1).sum())
    per_class = {}
    for index, name in enumerate(classes):
        per_class[name] = {"ap": per_class_ap.get(index + 1, 0.0), "ap_50": per_class_ap50.get(index + 1, 0.0),
                           "count_mae": float(errors[:, index].abs().mean()) if len(targets) else 0.0,
                           "count_bias": float(errors[:, index].mean()) if len(targets) else 0.0,
                           "support": int(sum(int((item["labels"] == index + 1).sum()) for item in truth))}
    return {"map": max(float(result["map"]), 0.0), "map_50": max(float(result["map_50"]), 0.0),
            "map_75": max(float(result["map_75"]), 0.0),
            "count_mae": float(errors.abs().mean()) if len(targets) else 0.0,
            "count_bias": float(errors.mean()) if len(targets) else 0.0, "per_class": per_class}


def _ap_at_first_threshold(precision: torch.Tensor) -> torch.Tensor:
    """Per-class AP at IoU 0.5 from COCOeval's precision array (IoU threshold x 101 recall points x class x area x
    max detections; -1 where a class has no true box): the mean over recall points at the first threshold, all
    areas, 100 detections, as pycocotools' summarize averages it. ``class_metrics`` alone averages over the ten
    thresholds; this reads AP@.5 from the same pass instead of a second one."""
    at_50 = precision[0, :, :, 0, -1]  # (recall points, classes)
    valid = at_50 > -1
    totals = torch.where(valid, at_50, torch.zeros_like(at_50)).sum(0)
    counts = valid.sum(0)
    return torch.where(counts > 0, totals / counts.clamp(min=1), torch.full_like(totals, -1.0))


def _per_class(values: torch.Tensor, classes: torch.Tensor) -> dict[int, float]:
    """torchmetrics' per-class tensor as {label: AP}; -1 (a class with no true box) counts as 0."""
    values, classes = values.reshape(-1), classes.reshape(-1)
    return {int(label): max(float(value), 0.0) for label, value in zip(classes, values)}
