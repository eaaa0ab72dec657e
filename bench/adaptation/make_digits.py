"""Digits -> photo-digits: a synthetic image domain shift built the way MNIST-M is built from MNIST.

Source: scikit-learn's 8x8 grey digits, upscaled to 32x32. Target: other digits of the same set, each
blended onto a random 32x32 patch of one of scikit-learn's two sample photos (china.jpg, flower.jpg)
as |patch - digit| per colour channel (Ganin et al. 2016, section 5.2). Source and target use disjoint
digit images; the target is split into a training pool and a test set. Everything follows ``--seed``.

    python bench/adaptation/make_digits.py OUT [--seed 0]

Writes ImageFolder layouts ``OUT/source/<digit>/``, ``OUT/target_train/<digit>/``, ``OUT/target_test/<digit>/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIDE = 32
SOURCE_SIZE = 900  # the rest (897) is the target domain
TARGET_TEST_SIZE = 300


def upscale(digits: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 32, 32) uint8, bilinear."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray((digit * 255.0 / 16.0).astype("uint8")).resize(
        (SIDE, SIDE), Image.BILINEAR)) for digit in digits])


def blend_on_photos(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 32, 32) uint8 -> (N, 32, 32, 3) uint8: |random photo patch - digit| per channel."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    out = np.empty((len(digits), SIDE, SIDE, 3), dtype=np.uint8)
    for index, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - SIDE)
        left = rng.integers(photo.shape[1] - SIDE)
        patch = photo[top : top + SIDE, left : left + SIDE].astype(np.int16)
        out[index] = np.abs(patch - digit[:, :, None].astype(np.int16)).astype(np.uint8)
    return out


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{prefix}-{index:04d}.png")


def make_digits(out: Path, seed: int = 0) -> dict[str, Path]:
    """Generate the three folders under ``out`` (replacing them); returns their paths."""
    import shutil

    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))
    images, labels = upscale(digits.images[order]), digits.target[order]
    source, target = slice(0, SOURCE_SIZE), slice(SOURCE_SIZE, None)
    target_images = blend_on_photos(images[target], rng)
    target_labels = labels[target]
    paths = {name: out / name for name in ("source", "target_train", "target_test")}
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    write_folder(paths["source"], images[source], labels[source], "source")
    write_folder(paths["target_train"], target_images[TARGET_TEST_SIZE:], target_labels[TARGET_TEST_SIZE:], "target")
    write_folder(paths["target_test"], target_images[:TARGET_TEST_SIZE], target_labels[:TARGET_TEST_SIZE], "test")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in make_digits(args.out, args.seed).items():
        print(name, path, sum(1 for _ in path.rglob("*.png")))


if __name__ == "__main__":
    main()
