"""Box-aware augmentation with ``torchvision.transforms.v2``: the boxes move with the pixels.

Flips (horizontal, and vertical where up and down mean nothing, as in micrographs), scale jitter (Ghiasi et
al. 2021, https://arxiv.org/abs/2012.07177: resize by a random factor, then the detector's own resizing) and
colour jitter (brightness, contrast, saturation, hue). Boxes are ``tv_tensors.BoundingBoxes`` in XYXY pixels,
so every geometric transform carries them; boxes squeezed below a pixel are dropped with their labels
(``SanitizeBoundingBoxes``). One seeded ``torch.Generator`` per run draws every random choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class BoxAugmentation:
    """What to apply, each with its probability or range; all zero = no augmentation (and the frozen-prefix
    cache may apply)."""

    horizontal_flip: float = 0.5
    vertical_flip: float = 0.0
    scale_min: float = 1.0  # scale jitter range: 1.0 and 1.0 = off
    scale_max: float = 1.0
    colour: float = 0.0  # brightness, contrast and saturation jitter strength; hue jitter is a tenth of it

    @property
    def geometric(self) -> bool:
        """Whether pixels move: the frozen-prefix cache cannot serve precomputed features then."""
        return self.horizontal_flip > 0 or self.vertical_flip > 0 or (self.scale_min, self.scale_max) != (1.0, 1.0)

    @property
    def enabled(self) -> bool:
        return self.geometric or self.colour > 0


def build_transform(augmentation: BoxAugmentation) -> Any:
    """The ``transforms.v2`` pipeline for ``augmentation`` (called with an image tensor and a target dict of
    ``boxes``, ``labels``), or None when nothing is on."""
    from torchvision.transforms import v2

    if not augmentation.enabled:
        return None
    steps: list[Any] = []
    if augmentation.horizontal_flip > 0:
        steps.append(v2.RandomHorizontalFlip(augmentation.horizontal_flip))
    if augmentation.vertical_flip > 0:
        steps.append(v2.RandomVerticalFlip(augmentation.vertical_flip))
    if (augmentation.scale_min, augmentation.scale_max) != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=0.0, scale=(augmentation.scale_min, augmentation.scale_max)))
    if augmentation.colour > 0:
        strength = augmentation.colour
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=strength / 10))
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(steps)


def as_target(boxes: torch.Tensor, labels: torch.Tensor, height: int, width: int) -> dict[str, Any]:
    """A target dict whose boxes ``transforms.v2`` moves with the image."""
    from torchvision import tv_tensors

    return {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)), "labels": labels}


def augment(transform: Any, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``transform`` on one image (C, H, W) and its boxes (N, 4) and labels (N,), its random draws from
    ``generator`` (transforms.v2 draws from torch's global generator: it is forked from ``generator`` here, so
    a seeded run repeats and nothing else's randomness moves)."""
    if transform is None:
        return image, boxes, labels
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image_out, target = transform(image, as_target(boxes, labels, image.shape[-2], image.shape[-1]))
    return image_out, target["boxes"].as_subclass(torch.Tensor), target["labels"]
