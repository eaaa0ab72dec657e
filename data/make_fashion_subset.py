"""Regenerate data/fashion/ (the embedded image default) from Debian's dataset-fashion-mnist package.

    apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb /tmp/fm
    python data/make_fashion_subset.py /tmp/fm/usr/share/datasets/fashion-mnist

Takes the first 200 training and first 100 test images of each class (in file order), so the subset
is balanced and the same every time, and writes them as PNG files in an ImageFolder layout.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
PER_CLASS = {"train": 200, "test": 100}
FILES = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """IDX format: big-endian int32 dims from byte 4, data after 4 + 4 * ndim."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main(source: Path, target: Path) -> None:
    for split, prefix in FILES.items():
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(CLASSES):
            folder = target / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in np.flatnonzero(labels == label)[: PER_CLASS[split]]:
                Image.fromarray(images[index], mode="L").save(folder / f"{prefix}-{index:05d}.png", optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent / "fashion")
