"""A detection split as fixed-size tensors: images letterboxed onto one canvas, boxes scaled with them.

Every image is resized so it fits ``canvas`` (its aspect ratio kept: scale = min(W_c / w, H_c / h)) and placed
at the canvas's top-left corner, the rest zero. Its boxes are multiplied by the same scale, so box and pixel
stay together; :func:`to_image_pixels` divides detections by it to give boxes in the original image's pixels.
One size for every image makes batches plain tensors (B, 3, H_c, W_c) that the frozen-prefix cache can store,
and the detector's own resizing a no-op (its ``min_size``/``max_size`` set to the canvas).

Boxes are stored padded: ``boxes`` (N, M, 4) and ``box_labels`` (N, M) with label 0 for padding (M: the most
boxes any image has); :func:`targets` turns a batch back into torchvision's list of target dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from crosstune.detection.annotations import Box


@dataclass
class DetectionSplit:
    """Letterboxed images (N, 3, H, W) uint8, padded boxes (N, M, 4) float32 in canvas pixels, their labels
    (N, M) int64 (1..K; 0 = padding) and each image's scale (N,) float64 from its own pixels to the canvas's."""

    images: torch.Tensor
    boxes: torch.Tensor
    box_labels: torch.Tensor
    scales: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """The box labels: what the training loop hands the loss (the ``detection`` loss reads the outputs only)."""
        return self.box_labels


def fitted_canvas(sizes: Sequence[tuple[int, int]], short_side: int) -> tuple[int, int]:
    """``(height, width)`` of a canvas whose short side is ``short_side`` and whose aspect ratio is the widest
    of the images' (``sizes`` as (width, height)), rounded up to a multiple of 32 (the deepest stride)."""
    ratio = max(width / height for width, height in sizes)
    height, width = (short_side, short_side * ratio) if ratio >= 1 else (short_side / ratio, short_side)
    return _multiple_of_32(height), _multiple_of_32(width)


def _multiple_of_32(value: float) -> int:
    return int(-(-round(value) // 32) * 32)


def encode_split(paths: Sequence[str], boxes: Sequence[Sequence[Box]], classes: Sequence[str],
                 canvas: tuple[int, int]) -> DetectionSplit:
    """Decode, letterbox and stack ``paths`` with their ``boxes`` (labels by index in ``classes``, plus one)."""
    from torchvision.transforms.v2 import functional as F

    from crosstune.data.images import read_image

    height, width = canvas
    most = max((len(items) for items in boxes), default=0)
    images = torch.zeros((len(paths), 3, height, width), dtype=torch.uint8)
    padded = torch.zeros((len(paths), max(most, 1), 4), dtype=torch.float32)
    labels = torch.zeros((len(paths), max(most, 1)), dtype=torch.int64)
    scales = torch.zeros(len(paths), dtype=torch.float64)
    index = {name: position + 1 for position, name in enumerate(classes)}
    for row, (path, items) in enumerate(zip(paths, boxes)):
        image = read_image(path, 3)
        scale = min(width / image.shape[-1], height / image.shape[-2])
        size = [min(height, round(image.shape[-2] * scale)), min(width, round(image.shape[-1] * scale))]
        images[row, :, :size[0], :size[1]] = F.resize(image, size, antialias=True) if scale != 1 else image
        scales[row] = scale
        for column, box in enumerate(items):
            padded[row, column] = torch.tensor(box.corners(), dtype=torch.float64) * scale
            labels[row, column] = index[box.label]
    return DetectionSplit(images, padded, labels, scales)


def save_detection_split(split: DetectionSplit, path: str | Path) -> None:
    """One safetensors file of a split's four tensors."""
    from safetensors.torch import save_file

    save_file({"images": split.images.contiguous(), "boxes": split.boxes.contiguous(),
               "box_labels": split.box_labels.contiguous(), "scales": split.scales.contiguous()}, str(path))


def load_detection_split(path: str | Path) -> DetectionSplit:
    """A split :func:`save_detection_split` wrote; a damaged file names itself and the fix."""
    from crosstune.io import load_tensors

    tensors = load_tensors(Path(path))
    return DetectionSplit(tensors["images"], tensors["boxes"], tensors["box_labels"], tensors["scales"])


def save_and_encode(params: Any, seed: int, splits: dict[str, Any], labels: Sequence[str], model_dir: str,
                    encoded_dir: str) -> dict[str, Any]:
    """The backbone stage of a detection task: build the image backbone with its weights, save it, fit the canvas
    to the training images (short side ``backbone.image_size``, or the images' own when 0) and letterbox every
    split onto it once. Returns the stage's summary."""
    from safetensors.torch import save_model

    from crosstune.backbones.vision import build_vision_backbone, vision_config
    from crosstune.detection.annotations import parse_boxes_json
    from crosstune.errors import DataError
    from crosstune.io import atomic_directory, write_json

    if len(splits.get("source", [])):
        raise DataError("a source domain is prepared, but detection does not adapt from one; set data.source to "
                        "data/source (no source domain).")
    backbone = build_vision_backbone(params.name, params.weights, seed)
    train = splits["train"]
    sizes = list(zip(train["width"].astype(int), train["height"].astype(int)))
    short_side = int(params.image_size) or min(min(width, height) for width, height in sizes)
    canvas = fitted_canvas(sizes, short_side)
    config = {**vision_config(params.name, params.weights, backbone), "canvas": list(canvas)}
    summary: dict[str, Any] = {
        "name": params.name, "source": f"weights {params.weights}", "architecture": type(backbone.body).__name__,
        "num_parameters": sum(parameter.numel() for parameter in backbone.parameters()),
        "num_blocks": len(backbone.blocks), "canvas": "x".join(map(str, canvas)),
    }
    with atomic_directory(model_dir) as staging:
        write_json(staging / "config.json", config)
        save_model(backbone, str(staging / "model.safetensors"))
    with atomic_directory(encoded_dir) as staging:
        for name in ("train", "validation", "test"):
            frame = splits[name]
            split = encode_split(list(frame["image"]), [parse_boxes_json(cell) for cell in frame["label"]], labels,
                                 canvas)
            save_detection_split(split, staging / f"{name}.safetensors")
            summary[f"{name}_images"] = len(split)
            summary[f"{name}_boxes"] = int((split.box_labels > 0).sum())
        empty = DetectionSplit(torch.zeros((0, 3, *canvas), dtype=torch.uint8), torch.zeros((0, 1, 4)),
                               torch.zeros((0, 1), dtype=torch.int64), torch.zeros(0, dtype=torch.float64))
        save_detection_split(empty, staging / "source.safetensors")  # every later stage may depend on it
        write_json(staging / "meta.json", {"modality": "image", "task": "detection", "backbone": params.name,
                                           "canvas": list(canvas), "source": False})
    return summary


def targets(boxes: torch.Tensor, box_labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """A batch's padded boxes as torchvision's targets: per image, ``boxes`` (n, 4) and ``labels`` (n,)."""
    return [{"boxes": image_boxes[labels > 0], "labels": labels[labels > 0]}
            for image_boxes, labels in zip(boxes, box_labels)]


def to_image_pixels(detections: Sequence[dict[str, torch.Tensor]],
                    scales: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Detections on the canvas as boxes in each image's own pixels."""
    return [{**found, "boxes": found["boxes"] / float(scale)} for found, scale in zip(detections, scales)]
