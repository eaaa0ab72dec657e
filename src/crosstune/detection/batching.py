"""Batches of a :class:`~crosstune.detection.encoding.DetectionSplit`: pixels in [0, 1] and padded boxes,
augmented box-aware for training only (:mod:`crosstune.detection.augment`), in the seeded order every image
batching uses (:func:`crosstune.data.images.image_batch_indices`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from crosstune.data.images import image_batch_indices
from crosstune.data.text_encoding import Batch
from crosstune.detection.augment import BoxAugmentation, augment, build_transform
from crosstune.detection.encoding import DetectionSplit


@dataclass
class DetectionBatching:
    """Image batches with their boxes; ``augmentation`` (None: none) moves boxes with the pixels in training."""

    batch_size: int
    augmentation: BoxAugmentation | None = None

    def train(self, split: DetectionSplit, generator: torch.Generator) -> Iterator[Batch]:
        transform = build_transform(self.augmentation) if self.augmentation is not None else None
        for indices in image_batch_indices(len(split), self.batch_size, generator):
            yield collate(split, indices, transform, generator)

    def evaluate(self, split: DetectionSplit, batch_size: int | None = None) -> Iterator[Batch]:
        for indices in image_batch_indices(len(split), batch_size or self.batch_size):
            yield collate(split, indices)


def collate(split: DetectionSplit, indices: torch.Tensor, transform: Any = None,
            generator: torch.Generator | None = None) -> Batch:
    """The model inputs for ``indices``: ``images`` (B, 3, H, W) float in [0, 1], ``boxes`` (B, M, 4) and
    ``box_labels`` (B, M), each image's boxes augmented with it when a ``transform`` is given."""
    images, boxes, labels = split.images[indices], split.boxes[indices], split.box_labels[indices]
    if transform is not None:
        moved = [augment(transform, image, image_boxes[image_labels > 0], image_labels[image_labels > 0], generator)
                 for image, image_boxes, image_labels in zip(images, boxes, labels)]
        images = torch.stack([image for image, _, _ in moved])
        most = max(1, max(len(image_labels) for _, _, image_labels in moved))
        boxes = torch.zeros((len(moved), most, 4), dtype=torch.float32)
        labels = torch.zeros((len(moved), most), dtype=torch.int64)
        for row, (_, image_boxes, image_labels) in enumerate(moved):
            boxes[row, :len(image_labels)] = image_boxes
            labels[row, :len(image_labels)] = image_labels
    return Batch(indices, {"images": images.float().div_(255.0), "boxes": boxes, "box_labels": labels}, labels)
