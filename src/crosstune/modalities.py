"""Modalities: what is read. One :class:`Modality` record per kind of input (texts, images, recordings) in
the ``MODALITIES`` registry: how the prepare stage reads and checks it, how an encoded split is batched and
stored, how new inputs are decoded for prediction, and whether its backbone is a Hugging Face encoder or a
staged one (stem + blocks, :class:`~crosstune.backbones.staged.StagedBackbone`). Code elsewhere asks the record
of the data's modality (``data/prepared/labels.json``, a saved model's ``config.json``); it never lists the
modalities itself.

Torch-free at import: every method imports what it needs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

from crosstune.errors import ArtifactError
from crosstune.registry import Registry

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from crosstune.config import AugmentParams, PrepareParams
    from crosstune.tasks.base import Task


class Modality:
    """One kind of input.

    Class attributes (the record):
        name: the modality, and the name of the prepared tables' input column.
        staged: its backbones are staged (stem + blocks, fixed pooling), not Hugging Face token encoders.
        column_param: the ``prepare`` key naming a table's column of these inputs.
        folder_suffixes: file suffixes a folder of these inputs holds (empty: not read from folders).
        split_tensor: the tensor name that marks an encoded split of this modality.
        usage: how a user passes new inputs to ``Predictor.predict`` (the model card's example).
        other_backbone_sources: what ``backbone.name`` may be besides a registered name.
        source_classifiers: its pretrained backbones keep a source classifier (LEEP and NCE score it).
        training_sections: params sections besides ``finetune`` that shape its training inputs (recorded with
            a trained model).
        own_params: params keys only this modality reads (the report leaves them out of another's runs).
    """

    name: ClassVar[str] = ""
    staged: ClassVar[bool] = False
    column_param: ClassVar[str] = ""
    folder_suffixes: ClassVar[tuple[str, ...]] = ()
    split_tensor: ClassVar[str] = ""
    usage: ClassVar[str] = ""
    other_backbone_sources: ClassVar[tuple[str, ...]] = ()
    source_classifiers: ClassVar[bool] = False
    training_sections: ClassVar[tuple[str, ...]] = ()
    own_params: ClassVar[tuple[str, ...]] = ()

    @property
    def model_type(self) -> str:
        """``model_type`` of a crosstune-form model directory of this modality."""
        return f"crosstune-{self.name}"

    # --- reading (prepare) ----------------------------------------------------------------------------------

    def check_files(self, paths: Sequence[str], params: "PrepareParams") -> None:
        """Decode every input file once: a corrupt, empty or too small one is a :class:`DataError`."""

    def content_keys(self, frame: "pd.DataFrame") -> "pd.Series":
        """What makes two examples the same (deduplication and test leakage): the file's bytes by default."""
        return frame[self.name].map(lambda file: hashlib.sha1(Path(file).read_bytes()).hexdigest())

    def resolve_paths(self, values: Sequence[str], table: Path) -> list[str]:
        """New inputs given in a table, as the predictor reads them (file paths relative to the table)."""
        return [str(Path(value) if Path(value).is_absolute() else table.parent / value) for value in values]

    # --- batching and storage -------------------------------------------------------------------------------

    def batching(self, config: dict[str, Any], batch_size: int, max_length: int,
                 augment: "AugmentParams | None" = None) -> Any:
        """How a split becomes batches for a saved model's ``config.json`` (:mod:`crosstune.data.batching`)."""
        raise NotImplementedError

    def load_split(self, tensors: dict[str, "torch.Tensor"], path: str | Path) -> Any:
        """An encoded split from the tensors of its file."""
        raise NotImplementedError

    def batch_indices(self, split: Any, batch_size: int,
                      generator: "torch.Generator | None") -> Iterator["torch.Tensor"]:
        """The row order the training loop (with ``generator``) or evaluation (without) serves ``split`` in."""
        from crosstune.data.images import image_batch_indices

        return image_batch_indices(len(split), batch_size, generator)

    def augments(self, augment: "AugmentParams") -> bool:
        """Whether the ``augment`` section changes this modality's training inputs."""
        return False

    # --- the backbone stage ---------------------------------------------------------------------------------

    def save_and_encode(self, params: Any, seed: int, splits: dict[str, "pd.DataFrame"], task: "Task",
                        labels: list[str], model_dir: str, encoded_dir: str, text_augment: Any,
                        blocks: dict[str, Any]) -> dict[str, Any]:
        """Load the chosen backbone, save it (with its per-block scores ``blocks``) into ``model_dir``, encode
        every split into ``encoded_dir`` (labels encoded as ``task`` encodes them); returns its summary."""
        raise NotImplementedError

    def vocabulary_texts(self, frame: "pd.DataFrame") -> list[str]:
        """Training texts a backbone may learn its vocabulary from (the tiny test BERT); none for files."""
        return []

    def candidate_parts(self, spec: str) -> tuple[str, int | None]:
        """A candidate's backbone name and the blocks it keeps (``NAME@K``, where the modality can cut them)."""
        return spec, None

    def selection_sample(self, values: list[Any]) -> Any:
        """The sampled inputs candidates are scored on (file paths are decoded by each candidate as it needs)."""
        return values

    def sample_digest(self, sample: Any) -> bytes:
        """The bytes a scored sample is identified by in the feature store (a file's bytes, not its path)."""
        return b"".join(hashlib.sha256(Path(path).read_bytes()).digest() for path in sample)

    def block_features(self, name: str, params: Any, sample: Any, train_texts: Sequence[str], seed: int) -> list[Any]:
        """Pooled features of ``sample`` after backbone ``name``'s stem and after each block, from one pass."""
        raise NotImplementedError

    # --- models ---------------------------------------------------------------------------------------------

    def rebuild_backbone(self, config: dict[str, Any]) -> Any:
        """A saved model's backbone architecture (``config``: the model's config.json), randomly initialised."""
        return self.rebuild_staged(config["backbone"])

    def rebuild_staged(self, backbone_config: dict[str, Any]) -> Any:
        """A staged backbone's architecture from what its config.json records, randomly initialised."""
        raise NotImplementedError

    def load_saved_backbone(self, directory: Path) -> tuple[Any, Any]:
        """The backbone stage's saved backbone (with its tokenizer, or None)."""
        from crosstune.io import load_weights, read_artifact_json

        backbone = self.rebuild_staged(read_artifact_json(directory / "config.json"))
        load_weights(backbone, directory / "model.safetensors")
        return backbone, None

    def load_tokenizer(self, directory: str | Path) -> Any:
        """The tokenizer saved beside a model, or None where the modality has none."""
        return None

    def saved_max_length(self, config: dict[str, Any], directory: str | Path) -> int:
        """Tokens per input a trained model was trained with (0: the modality has no tokens)."""
        return 0

    def num_blocks(self, config: dict[str, Any]) -> int | None:
        """How many blocks a saved model's backbone has (from its config.json)."""
        return int(config["backbone"]["num_blocks"])

    # --- prediction and evaluation --------------------------------------------------------------------------

    def decode(self, values: Sequence[Any], config: dict[str, Any], tokenizer: Any, max_length: int) -> Any:
        """An unlabelled split of new inputs (texts, or file paths) for a saved model."""
        raise NotImplementedError

    def baseline_inputs(self, splits: dict[str, Any], prepared_dir: str, config: dict[str, Any],
                        split: str) -> tuple[Any, list[Any], Any]:
        """(training inputs, their label names, ``split``'s inputs) for the baselines: the modality's features
        (:meth:`baseline_features`) of the stored splits' labelled rows, the source domain's included."""
        import numpy as np

        from crosstune.tasks.registry import TASKS

        task, labels = TASKS.get(config["task"]), config["labels"]
        parts = [splits["train"]] + ([splits["source"]] if len(splits["source"]) else [])
        masks = [task.labelled(part.labels) for part in parts]
        train_inputs = np.concatenate([self.baseline_features(part, config, mask) for part, mask in zip(parts, masks)])
        train_targets = [labels[int(i)] for part, mask in zip(parts, masks) for i in part.labels[mask]]
        return train_inputs, train_targets, self.baseline_features(splits[split], config)

    def baseline_features(self, split: Any, config: dict[str, Any], rows: Any = None) -> Any:
        """What the baselines learn from, for a stored split's inputs (``rows``: a mask of those to keep)."""
        raise NotImplementedError

    def figure_inputs(self, frame: "pd.DataFrame", split: Any, config: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments :func:`crosstune.reporting.figures.misclassified_figure` draws examples from."""
        raise NotImplementedError


class Text(Modality):
    """Texts in a table column; Hugging Face token encoders; length-bucketed token batches."""

    name = "text"
    column_param = "text_column"
    split_tensor = "input_ids"
    usage = '["a new text"]'
    other_backbone_sources = ("<local dir>", "<hub id>")
    own_params = ("prepare.text_column", "prepare.lowercase", "prepare.min_text_chars", "backbone.max_length",
                  "backbone.tiny", "text_augment")

    def content_keys(self, frame: "pd.DataFrame") -> "pd.Series":
        return frame["text"]

    def resolve_paths(self, values: Sequence[str], table: Path) -> list[str]:
        return list(values)

    def save_and_encode(self, params: Any, seed: int, splits: dict[str, "pd.DataFrame"], task: "Task",
                        labels: list[str], model_dir: str, encoded_dir: str, text_augment: Any,
                        blocks: dict[str, Any]) -> dict[str, Any]:
        from crosstune.backbones.text import save_and_encode

        return save_and_encode(params, seed, splits, task, labels, model_dir, encoded_dir, text_augment, blocks)

    def vocabulary_texts(self, frame: "pd.DataFrame") -> list[str]:
        return frame["text"].tolist()

    def candidate_parts(self, spec: str) -> tuple[str, int | None]:
        from crosstune.backbones.registry import split_candidate

        return split_candidate(spec)

    def sample_digest(self, sample: Any) -> bytes:
        return json.dumps(list(sample)).encode()

    def block_features(self, name: str, params: Any, sample: Any, train_texts: Sequence[str], seed: int) -> list[Any]:
        from crosstune.selection.candidates import text_block_features

        return text_block_features(name, params, sample, train_texts, seed)

    def batching(self, config: dict[str, Any], batch_size: int, max_length: int,
                 augment: "AugmentParams | None" = None) -> Any:
        from crosstune.data.batching import TextBatching

        return TextBatching(batch_size, max_length)

    def load_split(self, tensors: dict[str, "torch.Tensor"], path: str | Path) -> Any:
        from crosstune.data.text_encoding import split_from_tensors

        return split_from_tensors(tensors, path)

    def batch_indices(self, split: Any, batch_size: int,
                      generator: "torch.Generator | None") -> Iterator["torch.Tensor"]:
        from crosstune.data.text_encoding import batch_indices

        return batch_indices(split.lengths, batch_size, generator)

    def rebuild_backbone(self, config: dict[str, Any]) -> Any:
        from transformers import AutoModel

        from crosstune.transfer_model.storage import backbone_config

        return AutoModel.from_config(backbone_config(config))

    def load_saved_backbone(self, directory: Path) -> tuple[Any, Any]:
        from crosstune.backbones.text import load_pretrained
        from crosstune.io import artifact_fix, load_tensors

        load_tensors(directory / "model.safetensors")  # a damaged file: one clear line, not a loader traceback
        try:  # the text loader also registers the static-embedding architecture a saved backbone may be
            loaded = load_pretrained(str(directory), f"saved backbone {directory}")
            return loaded.model, loaded.tokenizer
        except (OSError, ValueError) as error:
            raise ArtifactError(f"{directory}: the saved backbone does not load ({error}); "
                                f"{artifact_fix(directory)}") from error

    def load_tokenizer(self, directory: str | Path) -> Any:
        from crosstune.transfer_model.storage import load_tokenizer

        return load_tokenizer(directory)

    def saved_max_length(self, config: dict[str, Any], directory: str | Path) -> int:
        if "max_length" not in config:
            raise ArtifactError(f"{Path(directory) / 'config.json'}: has no max_length, so it is not a trained model "
                                f"(finetune and scratch write one); point at models/finetuned or rerun `dvc repro`.")
        return int(config["max_length"])

    def num_blocks(self, config: dict[str, Any]) -> int | None:
        backbone = config.get("backbone_config", {})
        for key in ("num_hidden_layers", "n_layers", "num_layers", "n_layer"):
            if key in backbone:
                return int(backbone[key])
        return None

    def baseline_inputs(self, splits: dict[str, Any], prepared_dir: str, config: dict[str, Any],
                        split: str) -> tuple[Any, list[Any], Any]:
        """Texts from the prepared tables (a baseline tokenizes them itself), the source domain's included."""
        import pandas as pd

        from crosstune.data.prepared_dir import has_source, read_split
        from crosstune.tasks.registry import TASKS

        frames = [read_split(prepared_dir, "train")] + ([read_split(prepared_dir, "source")]
                                                        if has_source(prepared_dir) else [])
        task = TASKS.get(config["task"])
        inputs, targets = task.baseline_examples(task.labelled_rows(pd.concat(frames, ignore_index=True)))
        return inputs, targets, task.baseline_examples(read_split(prepared_dir, split))[0]

    def decode(self, values: Sequence[Any], config: dict[str, Any], tokenizer: Any, max_length: int) -> Any:
        from crosstune.tasks.registry import TASKS

        return TASKS.get(config["task"]).decode_texts(tokenizer, [str(text) for text in values], config, max_length)

    def figure_inputs(self, frame: "pd.DataFrame", split: Any, config: dict[str, Any]) -> dict[str, Any]:
        return {"texts": frame["text"].tolist()}


class Image(Modality):
    """Images in class folders or a table of paths; staged CNN backbones; pixel batches."""

    name = "image"
    staged = True
    column_param = "image_column"
    split_tensor = "images"
    usage = '["shoe.png"]  # image paths'
    source_classifiers = True
    training_sections = ("augment",)
    own_params = ("prepare.image_column", "prepare.min_image_size", "backbone.image_size", "freeze.train_batchnorm",
                  "augment.crop_scale_min", "augment.horizontal_flip", "augment.color_jitter",
                  "augment.randaugment_ops", "augment.randaugment_magnitude")

    @property
    def folder_suffixes(self) -> tuple[str, ...]:  # type: ignore[override]
        from crosstune.data.images import IMAGE_SUFFIXES

        return IMAGE_SUFFIXES

    def check_files(self, paths: Sequence[str], params: "PrepareParams") -> None:
        from crosstune.data.images import check_image

        for path in paths:
            check_image(Path(path), params.min_image_size)

    def batching(self, config: dict[str, Any], batch_size: int, max_length: int,
                 augment: "AugmentParams | None" = None) -> Any:
        from crosstune.backbones.vision import Preprocessing
        from crosstune.data.batching import ImageBatching
        from crosstune.data.images import build_augmentation

        raw = config["backbone"]["preprocessing"]
        preprocessing = Preprocessing(int(raw["image_size"]), tuple(raw["mean"]), tuple(raw["std"]))
        augmentation = build_augmentation(augment, preprocessing.image_size) if augment is not None else None
        return ImageBatching(batch_size, preprocessing, augmentation)

    def load_split(self, tensors: dict[str, "torch.Tensor"], path: str | Path) -> Any:
        from crosstune.data.images import ImageSplit

        if "box_labels" in tensors:  # a detection split: letterboxed images with their boxes
            from crosstune.detection.encoding import DetectionSplit

            return DetectionSplit(tensors["images"], tensors["boxes"], tensors["box_labels"], tensors["scales"])
        return ImageSplit(tensors["images"], tensors["labels"])

    def augments(self, augment: "AugmentParams") -> bool:
        return augment.enabled

    def save_and_encode(self, params: Any, seed: int, splits: dict[str, "pd.DataFrame"], task: "Task",
                        labels: list[str], model_dir: str, encoded_dir: str, text_augment: Any,
                        blocks: dict[str, Any]) -> dict[str, Any]:
        from crosstune.backbones.vision import save_and_encode

        return save_and_encode(params, seed, splits, _targets(task, labels), model_dir, encoded_dir, blocks)

    def selection_sample(self, values: list[Any]) -> Any:
        """Images decoded once at 256 px; each candidate resizes further."""
        from crosstune.data.images import decode_images

        return decode_images(values, 256)

    def sample_digest(self, sample: Any) -> bytes:
        return sample.numpy().tobytes()

    def block_features(self, name: str, params: Any, sample: Any, train_texts: Sequence[str], seed: int) -> list[Any]:
        from crosstune.selection.candidates import image_block_features

        return image_block_features(name, params, sample, seed)

    def rebuild_staged(self, backbone_config: dict[str, Any]) -> Any:
        from crosstune.backbones.vision import rebuild_vision_backbone

        return rebuild_vision_backbone(backbone_config)

    def decode(self, values: Sequence[Any], config: dict[str, Any], tokenizer: Any, max_length: int) -> Any:
        import torch

        from crosstune.data.images import ImageSplit, decode_images

        size = int(config["backbone"]["preprocessing"]["image_size"])
        return ImageSplit(decode_images([str(path) for path in values], size), torch.zeros(len(values)))

    def baseline_features(self, split: Any, config: dict[str, Any], rows: Any = None) -> Any:
        from crosstune.evaluation.baselines import image_pixels

        return image_pixels(split.images if rows is None else split.images[rows])

    def figure_inputs(self, frame: "pd.DataFrame", split: Any, config: dict[str, Any]) -> dict[str, Any]:
        return {"images": split.images}


class Audio(Modality):
    """Recordings in class folders or a table of paths; staged speech encoders; feature batches."""

    name = "audio"
    staged = True
    training_sections = ("augment",)
    own_params = ("prepare.audio_column", "prepare.min_audio_seconds", "backbone.clip_seconds", "backbone.clip_align",
                  "augment.time_mask_prob", "augment.time_mask_length", "augment.freq_mask_prob",
                  "augment.freq_mask_length")
    column_param = "audio_column"
    split_tensor = "waveforms"
    usage = '["recording.wav"]  # wav/flac paths'

    @property
    def folder_suffixes(self) -> tuple[str, ...]:  # type: ignore[override]
        from crosstune.data.audio import AUDIO_SUFFIXES

        return AUDIO_SUFFIXES

    def check_files(self, paths: Sequence[str], params: "PrepareParams") -> None:
        from crosstune.data.audio import check_audio

        for path in paths:
            check_audio(Path(path), params.min_audio_seconds)

    def batching(self, config: dict[str, Any], batch_size: int, max_length: int,
                 augment: "AugmentParams | None" = None) -> Any:
        from crosstune.backbones.audio_features import AudioPreprocessing
        from crosstune.data.batching import AudioBatching
        from crosstune.data.spec_augment import SpecAugment

        masking = None
        if augment is not None and self.augments(augment):
            masking = SpecAugment(augment.time_mask_prob, augment.time_mask_length, augment.freq_mask_prob,
                                  augment.freq_mask_length)
        return AudioBatching(batch_size, AudioPreprocessing.from_dict(config["backbone"]["preprocessing"]), masking)

    def augments(self, augment: "AugmentParams") -> bool:
        return augment.masks_audio

    def load_split(self, tensors: dict[str, "torch.Tensor"], path: str | Path) -> Any:
        from crosstune.data.audio import AudioSplit

        return AudioSplit(tensors["waveforms"], tensors["labels"])

    def save_and_encode(self, params: Any, seed: int, splits: dict[str, "pd.DataFrame"], task: "Task",
                        labels: list[str], model_dir: str, encoded_dir: str, text_augment: Any,
                        blocks: dict[str, Any]) -> dict[str, Any]:
        from crosstune.backbones.audio import save_and_encode

        return save_and_encode(params, seed, splits, _targets(task, labels), model_dir, encoded_dir, blocks)

    def block_features(self, name: str, params: Any, sample: Any, train_texts: Sequence[str], seed: int) -> list[Any]:
        from crosstune.selection.candidates import audio_block_features

        return audio_block_features(name, params, sample, seed)

    def rebuild_staged(self, backbone_config: dict[str, Any]) -> Any:
        from crosstune.backbones.audio import rebuild_audio_backbone

        return rebuild_audio_backbone(backbone_config)

    def decode(self, values: Sequence[Any], config: dict[str, Any], tokenizer: Any, max_length: int) -> Any:
        import torch

        from crosstune.backbones.audio_features import AudioPreprocessing
        from crosstune.data.audio import AudioSplit, decode_audio

        clip = AudioPreprocessing.from_dict(config["backbone"]["preprocessing"])
        waveforms = decode_audio([str(path) for path in values], clip.sample_rate, clip.clip_samples, clip.align)
        return AudioSplit(waveforms, torch.zeros(len(values)))

    def baseline_features(self, split: Any, config: dict[str, Any], rows: Any = None) -> Any:
        from crosstune.evaluation.baselines import audio_mfcc

        return audio_mfcc(split.waveforms if rows is None else split.waveforms[rows], sample_rate(config))

    def figure_inputs(self, frame: "pd.DataFrame", split: Any, config: dict[str, Any]) -> dict[str, Any]:
        return {"waveforms": split.waveforms, "sample_rate": sample_rate(config)}


def sample_rate(config: dict[str, Any]) -> int:
    """The sample rate an audio model's backbone reads (its config.json's preprocessing)."""
    return int(config["backbone"]["preprocessing"]["sample_rate"])


MODALITIES: Registry[Modality] = Registry("modality")
for _modality in (Text(), Image(), Audio()):
    MODALITIES.register(_modality.name)(_modality)


def _targets(task: "Task", labels: list[str]) -> Any:
    """A prepared frame -> its encoded labels, as ``task`` encodes them."""
    return lambda frame: task.encode_labels(frame["label"], labels)


def get_modality(name: str) -> Modality:
    return MODALITIES.get(name)


def modality_of_config(config: dict[str, Any]) -> Modality:
    """The modality a saved model's (or saved backbone's) config.json records; text for a Hugging Face config."""
    return MODALITIES.get(config.get("modality", "text"))


def modality_of_frame(frame: "pd.DataFrame") -> Modality:
    """The modality whose input column a clean table holds."""
    return next(MODALITIES.get(name) for name in MODALITIES if name in frame)


def modality_of_tensors(tensors: dict[str, Any]) -> Modality:
    """The modality of an encoded split, from the tensors its file holds (text when it holds none of the
    others': its loader then names what the file lacks)."""
    return next((MODALITIES.get(name) for name in MODALITIES if MODALITIES.get(name).split_tensor in tensors),
                MODALITIES.get("text"))


def modality_of_values(values: Sequence[str]) -> Modality:
    """What a table column holds, by its values: paths with an image or audio suffix for most of them, else
    texts. Lets `crosstune predict` tell a table of recordings given to a text model from a mistyped column."""
    for name in MODALITIES:
        suffixes = MODALITIES.get(name).folder_suffixes
        if suffixes and values and sum(Path(str(value)).suffix.lower() in suffixes for value in values) * 2 > \
                len(values):
            return MODALITIES.get(name)
    return MODALITIES.get("text")


def folder_modality(directory: Path) -> Modality:
    """The modality of a folder-per-class layout: the first class folder with files decides, by suffix."""
    classes = sorted(child for child in directory.iterdir() if child.is_dir() and not child.name.startswith("."))
    for class_dir in classes:
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                for name in MODALITIES:
                    if path.suffix.lower() in MODALITIES.get(name).folder_suffixes:
                        return MODALITIES.get(name)
                return MODALITIES.get("image")
    return MODALITIES.get("image")
