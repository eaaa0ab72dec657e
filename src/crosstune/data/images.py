"""Image data: reading and validating files, storing decoded splits, and batches with transforms.

The backbone stage decodes every image once into a uint8 tensor (``images.safetensors``: ``images``
(N, C, H, W), C = 1 for an all-grey set, and ``labels``). Images that all share one size no larger
than the backbone's input stay at their native size (28x28 Fashion-MNIST stays tiny on disk) and are
resized per batch; otherwise they are resized (shorter side) and centre-cropped to the input size.
Per batch: grey is promoted to 3 channels, training batches get the ``augment`` transforms
(torchvision.transforms.v2, per image), then resize and normalisation from the backbone's weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from crosstune.data.text_encoding import Batch
from crosstune.errors import DataError

if TYPE_CHECKING:
    from crosstune.backbones.vision import Preprocessing
    from crosstune.config import AugmentParams

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def check_image(path: Path, min_size: int) -> tuple[int, int, str]:
    """Open and fully decode one image; returns (width, height, mode) or raises `DataError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            width, height, mode = image.width, image.height, image.mode
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable or corrupt image ({error}); replace or remove the file.") from error
    if min(width, height) < min_size:
        raise DataError(f"{path}: {width}x{height} pixels is smaller than prepare.min_image_size={min_size}; "
                        f"remove it or lower prepare.min_image_size.")
    return width, height, mode


def read_image(path: str | Path, channels: int) -> torch.Tensor:
    """Decode to uint8 (C, H, W) with ``channels`` 1 (grey) or 3 (RGB)."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(path) as image:
        return pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))


def decode_images(paths: Sequence[str], image_size: int) -> torch.Tensor:
    """All images of a split as one uint8 tensor (N, C, H, W); see the module docstring for sizes."""
    if not paths:
        return torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8)
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    modes, sizes = set(), set()
    for path in paths:
        with Image.open(path) as image:
            modes.add(image.mode)
            sizes.add(image.size)
    channels = 1 if modes <= {"L", "1", "I;16", "I"} else 3
    keep_native = len(sizes) == 1 and max(next(iter(sizes))) <= image_size
    images = []
    for path in paths:
        image = read_image(path, channels)
        if not keep_native:
            image = F.center_crop(F.resize(image, [image_size], antialias=True), [image_size, image_size])
        images.append(image)
    return torch.stack(images)


@dataclass
class ImageSplit:
    """A decoded image split.

    Shape:
        images (N, C, H, W) uint8; labels (N,)
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def build_augmentation(params: "AugmentParams", image_size: int) -> "torch.nn.Module | None":
    """The training-time transforms named in the ``augment`` section, or None when all are off."""
    from torchvision.transforms import v2

    steps: list[torch.nn.Module] = []
    if params.crop_scale_min < 1.0:
        steps.append(v2.RandomResizedCrop(size=image_size, scale=(params.crop_scale_min, 1.0), antialias=True))
    if params.horizontal_flip > 0:
        steps.append(v2.RandomHorizontalFlip(p=params.horizontal_flip))
    if params.vertical_flip > 0:
        steps.append(v2.RandomVerticalFlip(p=params.vertical_flip))
    if params.scale_jitter > 0:  # zoom in or out about the centre, the frame kept (as detection's scale jitter)
        steps.append(v2.RandomAffine(degrees=0.0, scale=(1.0 - params.scale_jitter, 1.0 + params.scale_jitter)))
    if params.color_jitter > 0:
        strength = params.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    if params.randaugment_ops > 0:
        steps.append(v2.RandAugment(num_ops=params.randaugment_ops, magnitude=params.randaugment_magnitude))
    return v2.Compose(steps) if steps else None


class ImageBatcher:
    """Turns uint8 images into normalised model inputs, augmenting only when asked."""

    def __init__(self, preprocessing: "Preprocessing", augmentation: "torch.nn.Module | None" = None) -> None:
        self.preprocessing = preprocessing
        self.augmentation = augmentation

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, H, W) uint8 -> (B, 3, S, S) float32, normalised."""
        from torchvision.transforms.v2 import functional as F

        size = self.preprocessing.image_size
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.augmentation is not None:
            images = torch.stack([F.resize(self.augmentation(image), [size, size], antialias=True)
                                  for image in images.contiguous()])
        if tuple(images.shape[-2:]) != (size, size):
            images = F.resize(images, [size, size], antialias=True)
        pixels = images.float().div_(255.0)
        return F.normalize(pixels, list(self.preprocessing.mean), list(self.preprocessing.std))


def iterate_image_batches(split: ImageSplit, batch_size: int, batcher: ImageBatcher,
                          generator: torch.Generator | None = None) -> Iterator[Batch]:
    """Shuffled (seeded) batches when a ``generator`` is given, else in order."""
    for indices in image_batch_indices(len(split), batch_size, generator):
        yield Batch(indices, {"pixel_values": batcher(split.images[indices])}, split.labels[indices])


def image_batch_indices(size: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Row indices of each batch: a seeded permutation for training, in order for evaluation."""
    order = torch.randperm(size, generator=generator) if generator is not None else torch.arange(size)
    for start in range(0, size, batch_size):
        yield order[start : start + batch_size]


def save_image_split(split: ImageSplit, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({"images": split.images.contiguous(), "labels": split.labels}, str(path))

