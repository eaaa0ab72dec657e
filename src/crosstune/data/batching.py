"""How a split becomes batches, per modality: the one place the training loop and inference ask.

Text: length-bucketed dynamic padding (:mod:`crosstune.data.text_encoding`). Images: per-batch resize and
normalisation from the backbone's preprocessing, with ``augment`` transforms on training batches only
(:mod:`crosstune.data.images`). Audio: the backbone's own feature extraction per batch
(:mod:`crosstune.data.audio`), SpecAugment's masks on training batches when ``augment`` turns them on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Union

from crosstune.data.audio import AudioBatcher, AudioSplit, iterate_audio_batches
from crosstune.data.images import ImageBatcher, ImageSplit, iterate_image_batches
from crosstune.data.text_encoding import Batch, EncodedSplit, iterate_batches

if TYPE_CHECKING:
    import torch

    from crosstune.backbones.audio_features import AudioPreprocessing
    from crosstune.backbones.vision import Preprocessing
    from crosstune.config import AugmentParams
    from crosstune.data.spec_augment import SpecAugment

Split = Union[EncodedSplit, ImageSplit, AudioSplit]


@dataclass
class TextBatching:
    """Token batches cut at ``max_length`` tokens."""

    batch_size: int
    max_length: int

    def train(self, split: EncodedSplit, generator: "torch.Generator") -> Iterator[Batch]:
        return iterate_batches(split, self.batch_size, self.max_length, generator)

    def evaluate(self, split: EncodedSplit, batch_size: int | None = None) -> Iterator[Batch]:
        return iterate_batches(split, batch_size or self.batch_size, self.max_length)


@dataclass
class ImageBatching:
    """Pixel batches at the backbone's input size, augmented for training only."""

    batch_size: int
    preprocessing: "Preprocessing"
    augmentation: Any = None

    def train(self, split: ImageSplit, generator: "torch.Generator") -> Iterator[Batch]:
        return iterate_image_batches(split, self.batch_size, ImageBatcher(self.preprocessing, self.augmentation),
                                     generator)

    def evaluate(self, split: ImageSplit, batch_size: int | None = None) -> Iterator[Batch]:
        return iterate_image_batches(split, batch_size or self.batch_size, ImageBatcher(self.preprocessing))


@dataclass
class AudioBatching:
    """Feature batches in the backbone's own feature extraction, masked for training when ``masking`` is on
    (SpecAugment, :mod:`crosstune.data.spec_augment`)."""

    batch_size: int
    preprocessing: "AudioPreprocessing"
    masking: "SpecAugment | None" = None

    def train(self, split: AudioSplit, generator: "torch.Generator") -> Iterator[Batch]:
        batches = iterate_audio_batches(split, self.batch_size, AudioBatcher(self.preprocessing), generator)
        if self.masking is None:
            return batches
        return (dataclasses.replace(batch, inputs={**batch.inputs, "input_features": self.masking(
            batch.inputs["input_features"], generator)}) for batch in batches)

    def evaluate(self, split: AudioSplit, batch_size: int | None = None) -> Iterator[Batch]:
        return iterate_audio_batches(split, batch_size or self.batch_size, AudioBatcher(self.preprocessing))


Batching = Union[TextBatching, ImageBatching, AudioBatching]


def batching_for(config: dict[str, Any], batch_size: int, max_length: int,
                 augment: "AugmentParams | None" = None) -> Batching:
    """The batching a saved model's ``config.json`` calls for: its task's where the task batches its own inputs
    (:meth:`crosstune.tasks.base.Task.batching`), else its modality's (:mod:`crosstune.modalities`)."""
    from crosstune.modalities import modality_of_config
    from crosstune.tasks.registry import TASKS

    if config.get("task") in TASKS:
        own = TASKS.get(config["task"]).batching(config, batch_size, augment)
        if own is not None:
            return own
    return modality_of_config(config).batching(config, batch_size, max_length, augment)


def load_any_split(path: str | Path) -> Split:
    """An encoded split of whichever modality the file holds."""
    from crosstune.io import load_tensors
    from crosstune.modalities import modality_of_tensors

    tensors = load_tensors(path)
    return modality_of_tensors(tensors).load_split(tensors, path)
