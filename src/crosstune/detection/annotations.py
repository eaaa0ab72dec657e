"""Boxes on images: the record every annotation format is read into, and the checks every box must pass.

Three formats cover what annotation tools export: a Pascal VOC folder (one XML per image; Everingham et al.
2010, https://doi.org/10.1007/s11263-009-0275-4), COCO JSON (Lin et al. 2014, https://arxiv.org/abs/1405.0312)
and YOLO text files with a class list (:mod:`crosstune.detection.formats` reads them). Each becomes a list of
:class:`AnnotatedImage`: the image's path and size and its boxes in absolute pixel corners
``(x_min, y_min, x_max, y_max)``, the convention torchvision's detection models take.

A box outside the image, of zero area or of a class outside the class list, an image without annotations or
annotations without an image, and an image that cannot be decoded are each one :class:`DataError` naming the
file, the box and the fix; with ``drop_bad_boxes`` the bad boxes (not the missing files) are dropped instead
and counted in the log. Nothing is written here: prepare writes the frame :func:`annotations_frame` makes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from crosstune.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EDGE_TOLERANCE = 1.0  # pixels: VOC's 1-based corners put a box at the far edge at x_max = width (+1 by some tools)


@dataclass(frozen=True)
class Box:
    """One object: its class name and pixel corners, ``(x_min, y_min)`` inclusive, as the file gave them."""

    label: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def corners(self) -> list[float]:
        return [self.x_min, self.y_min, self.x_max, self.y_max]

    def describe(self) -> str:
        return f"{self.label} box ({self.x_min:g}, {self.y_min:g}, {self.x_max:g}, {self.y_max:g})"


@dataclass(frozen=True)
class AnnotatedImage:
    """An image file, its size in pixels and its boxes; ``source`` is the annotation file (for errors)."""

    image: Path
    width: int
    height: int
    boxes: tuple[Box, ...]
    source: Path

    def boxes_json(self) -> str:
        """The boxes as the prepared table stores them: ``[[x_min, y_min, x_max, y_max, label], ...]``."""
        return json.dumps([[*box.corners(), box.label] for box in self.boxes], separators=(",", ":"))


def parse_boxes_json(text: str) -> list[Box]:
    """The prepared table's ``label`` cell back into boxes."""
    return [Box(str(label), float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1, label in json.loads(text)]


def image_size(path: Path, source: Path) -> tuple[int, int]:
    """``(width, height)`` of an image that decodes; a missing or unreadable one is a :class:`DataError`."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{source}: its image {path} does not exist; add the image or remove its annotations.")
    try:
        with Image.open(path) as image:
            image.load()  # decode the pixels: a truncated JPEG fails here, not mid-training
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{path}: cannot be read as an image ({error}); replace the file or remove it and its "
                        f"annotations ({source}).") from error


def box_problem(box: Box, width: int, height: int, classes: Sequence[str] | None) -> tuple[str, str] | None:
    """What is wrong with ``box`` on a ``width`` x ``height`` image, as (kind, in words); None: nothing."""
    if classes is not None and box.label not in classes:
        return "unknown class", f"has a class that is not in the class list {list(classes)}"
    if box.x_max <= box.x_min or box.y_max <= box.y_min:
        return "zero area", "has zero area (x_max <= x_min or y_max <= y_min)"
    if box.x_min < -EDGE_TOLERANCE or box.y_min < -EDGE_TOLERANCE or box.x_max > width + EDGE_TOLERANCE \
            or box.y_max > height + EDGE_TOLERANCE:
        return "outside the image", f"lies outside the {width}x{height} image"
    return None


def checked(images: Sequence[AnnotatedImage], classes: Sequence[str] | None, drop_bad_boxes: bool,
            path: Path) -> list[AnnotatedImage]:
    """``images`` with every box checked: the first bad box is a :class:`DataError` naming its file, or with
    ``drop_bad_boxes`` every bad box is dropped and counted by kind in the log. Boxes are clipped to the image
    (they may overshoot it by :data:`EDGE_TOLERANCE`)."""
    kept, dropped = [], Counter()
    for item in images:
        boxes = []
        for box in item.boxes:
            problem = box_problem(box, item.width, item.height, classes)
            if problem is None:
                boxes.append(replace(box, x_min=max(box.x_min, 0.0), y_min=max(box.y_min, 0.0),
                                     x_max=min(box.x_max, float(item.width)), y_max=min(box.y_max, float(item.height))))
            elif drop_bad_boxes:
                dropped[problem[0]] += 1
            else:
                raise DataError(f"{item.source}: the {box.describe()} {problem[1]}; fix or delete the box, or set "
                                f"prepare.drop_bad_boxes: true to drop such boxes with a count in the log.")
        kept.append(replace(item, boxes=tuple(boxes)))
    if dropped:
        logger.warning("%s: dropped %d bad box(es): %s", path, sum(dropped.values()),
                       ", ".join(f"{count} {kind}" for kind, count in sorted(dropped.items())))
    return kept


def class_names(images: Sequence[AnnotatedImage]) -> list[str]:
    """The sorted class names the boxes use (output i of a detector = class i + 1; 0 is the background)."""
    return sorted({box.label for item in images for box in item.boxes})


def annotations_frame(images: Sequence[AnnotatedImage]) -> Any:
    """The prepared table of a detection split: ``image`` (path), ``width``, ``height`` and ``label`` (the boxes
    as :meth:`AnnotatedImage.boxes_json`), one row per image in file-name order."""
    import pandas as pd

    ordered = sorted(images, key=lambda item: str(item.image))
    return pd.DataFrame({"image": [str(item.image) for item in ordered],
                         "width": [item.width for item in ordered],
                         "height": [item.height for item in ordered],
                         "label": [item.boxes_json() for item in ordered]})
