"""Boxes drawn on images: what a person checks a detector by. True boxes are drawn thin in their class's colour,
predictions thick with their class and score; a true box no confident prediction of its class matched (IoU
below 0.5) is drawn red, as missed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

PALETTE = ((31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207), (188, 189, 34),
           (227, 119, 194), (140, 86, 75))  # matplotlib's tab10 without its red and grey
MISSED = (214, 39, 40)
MATCH_IOU = 0.5


def matched(truth: torch.Tensor, truth_labels: torch.Tensor, found: torch.Tensor, found_labels: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy one-to-one matching at IoU >= 0.5 within a class, predictions in the order given (by score):
    (which true boxes were found, which predictions matched one)."""
    from torchvision.ops import box_iou

    hit = torch.zeros(len(truth), dtype=torch.bool)
    used = torch.zeros(len(found), dtype=torch.bool)
    if len(truth) and len(found):
        overlaps = box_iou(found.float(), truth.float())
        for row in range(len(found)):
            candidates = (overlaps[row] >= MATCH_IOU) & ~hit & (truth_labels == found_labels[row])
            if candidates.any():
                column = int(torch.where(candidates, overlaps[row], torch.tensor(-1.0)).argmax())
                hit[column], used[row] = True, True
    return hit, used


def image_errors(truth: dict[str, torch.Tensor], found: dict[str, torch.Tensor], threshold: float) -> int:
    """Missed true boxes plus unmatched confident predictions (score >= ``threshold``): how wrong an image is."""
    keep = found["scores"] >= threshold
    hit, used = matched(truth["boxes"], truth["labels"], found["boxes"][keep], found["labels"][keep])
    return int((~hit).sum()) + int((~used).sum())


def draw_boxes(image_path: str | Path, truth: dict[str, torch.Tensor] | None, found: dict[str, torch.Tensor],
               classes: Sequence[str], threshold: float) -> Any:
    """The image with its true boxes (thin; red where missed) and the predictions scoring at least ``threshold``
    (thick, labelled with class and score), as a PIL image in the image's own pixels."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    draw = ImageDraw.Draw(image)
    keep = found["scores"] >= threshold
    boxes, labels, scores = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
    if truth is not None:
        hit, _ = matched(truth["boxes"], truth["labels"], boxes, labels)
        for box, label, was_found in zip(truth["boxes"].tolist(), truth["labels"].tolist(), hit.tolist()):
            draw.rectangle(box, outline=PALETTE[(label - 1) % len(PALETTE)] if was_found else MISSED, width=1)
    for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        colour = PALETTE[(label - 1) % len(PALETTE)]
        draw.rectangle(box, outline=colour, width=3)
        caption = f"{classes[label - 1]} {score:.2f}"
        draw.text((box[0] + 3, max(box[1] - 11, 0)), caption, fill=colour)
    return image
