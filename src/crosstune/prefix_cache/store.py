"""Frozen-prefix caching: compute what the frozen bottom of the model outputs once, train on it.

With ``freeze.depth: N`` the embeddings (or stem) and the bottom N blocks never change and, being in
eval mode, are deterministic functions of the input. Running them on every batch of every epoch is
wasted work, so the ``cache`` stage runs them once per split and stores their outputs
(``data/features/{split}.safetensors``): hidden states of the real tokens for text (their attention
masks follow from the lengths), feature maps for images, and for a fully frozen backbone
(``freeze.depth: all``) just the pooled features, so the head trains on those alone.
Training then runs only the upper blocks and the head, serving the same batches in the same order
as the uncached path (:func:`crosstune.data.text_encoding.batch_indices`), so the trained weights match it
within floating-point noise.

The cache is invalid, and the stage says so in ``meta.json`` and falls back, when anything on the
frozen path is random or changes during training: image augmentation, trainable BatchNorm in frozen
blocks, gradual unfreezing or LoRA adapters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from crosstune.errors import DataError

if TYPE_CHECKING:
    import torch

    from crosstune.data.batching import Batching, Split
    from crosstune.data.text_encoding import Batch
    from crosstune.transfer_model.modules import PrefixLevel, TransferModel

logger = logging.getLogger(__name__)


@dataclass
class CachedSplit:
    """A split's frozen-prefix outputs.

    Shape:
        features (N, H) for level "all"; or states (sum of kept tokens, H) with offsets (N + 1,) for text,
        or feature_maps (N, C, H, W) for images, or a detector's prefix (N, C, H, W) with the pyramid's inputs
        below it (``pyramid_<stage>``) and its boxes and box labels; lengths (N,) the untruncated token counts
        (text: they order batches exactly as the uncached path does); labels (N,), or a per-token task's (W, 2) with its
        positions (N, L) (:class:`crosstune.data.text_encoding.EncodedSplit`).
    """

    level: "PrefixLevel"
    tensors: dict[str, "torch.Tensor"]
    labels: "torch.Tensor"
    lengths: Optional["torch.Tensor"] = None
    positions: Optional["torch.Tensor"] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0] if self.positions is None else self.positions.shape[0])


@dataclass
class CachedBatching:
    """Batches of cached prefix outputs, in exactly the order :class:`~crosstune.data.batching.TextBatching` or
    :class:`~crosstune.data.batching.ImageBatching` would serve the raw inputs."""

    batch_size: int
    modality: str

    def _indices(self, split: CachedSplit, batch_size: int,
                 generator: "torch.Generator | None") -> Iterator["torch.Tensor"]:
        from crosstune.modalities import get_modality

        return get_modality(self.modality).batch_indices(split, batch_size, generator)

    def train(self, split: CachedSplit, generator: "torch.Generator") -> Iterator["Batch"]:
        return (collate_cached(split, indices) for indices in self._indices(split, self.batch_size, generator))

    def evaluate(self, split: CachedSplit, batch_size: int | None = None) -> Iterator["Batch"]:
        return (collate_cached(split, indices) for indices in self._indices(split, batch_size or self.batch_size, None))


def collate_cached(split: CachedSplit, indices: "torch.Tensor") -> "Batch":
    """The model inputs of :meth:`~crosstune.transfer_model.modules.TransferModel.forward_from_prefix` for
    ``indices``."""
    import torch

    from crosstune.data.text_encoding import Batch

    labels = split.labels[indices] if split.positions is None else split.labels
    if "prefix" in split.tensors:  # a detector's frozen stages (and the boxes the loss reads)
        return Batch(indices, {key: value[indices].float() if value.is_floating_point() else value[indices]
                               for key, value in split.tensors.items()}, labels)
    if "encoder_states" in split.tensors or "encoder_hidden" in split.tensors:  # a recogniser's encoder
        from crosstune.data.audio import trim_padding

        labels = trim_padding(labels)
        inputs = {key: value[indices].float() for key, value in split.tensors.items()}
        return Batch(indices, {**inputs, "decoder_labels": labels}, labels)
    if "features" in split.tensors:
        return Batch(indices, {"features": split.tensors["features"][indices].float()}, labels)
    if "feature_maps" in split.tensors:
        return Batch(indices, {"feature_maps": split.tensors["feature_maps"][indices].float()}, labels)
    states, offsets = split.tensors["states"], split.tensors["offsets"]
    starts, stops = offsets[indices], offsets[indices + 1]
    rows = [states[start:stop] for start, stop in zip(starts.tolist(), stops.tolist())]
    hidden = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).float()  # zeros where padded
    kept = stops - starts
    attention_mask = (torch.arange(hidden.shape[1]).unsqueeze(0) < kept.unsqueeze(1)).long()
    inputs = {"hidden_states": hidden, "attention_mask": attention_mask}
    if split.positions is None:
        return Batch(indices, inputs, labels)
    from crosstune.data.text_encoding import token_labels

    positions = split.positions[indices, : hidden.shape[1]]
    return Batch(indices, inputs, token_labels(split.labels, positions), positions)


def build_cached_split(model: "TransferModel", level: "PrefixLevel", split: "Split", batching: "Batching",
                       batch_size: int, dtype: str, device: str) -> CachedSplit:
    """Run the frozen prefix over ``split`` once (eval mode, no gradients)."""
    import torch
    from tqdm.auto import tqdm

    storage = getattr(torch, dtype)
    model.eval()
    chunks: dict[int, dict[str, torch.Tensor]] = {}
    with torch.inference_mode():
        for batch in tqdm(batching.evaluate(split, batch_size), desc="cache", unit="batch", mininterval=2.0,
                          total=-(-len(split) // batch_size)):
            batch = batch.to(device)
            outputs = model.prefix_outputs(level, **batch.inputs)
            for row, index in enumerate(batch.indices.tolist()):
                if "hidden_states" in outputs:  # token states: only the row's real tokens are kept
                    kept = int(batch.inputs["attention_mask"][row].sum())
                    chunks[index] = {"states": outputs["hidden_states"][row, :kept].to("cpu", storage)}
                else:
                    chunks[index] = {key: value[row].to("cpu", storage) for key, value in outputs.items()}
    order = range(len(chunks))
    if "states" in chunks[0]:
        states = [chunks[index]["states"] for index in order]
        offsets = torch.zeros(len(states) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor([len(rows) for rows in states]), 0)
        tensors = {"states": torch.cat(states), "offsets": offsets}
    else:  # one tensor per example, or several (a detector's prefix and the pyramid inputs below it)
        tensors = {key: torch.stack([chunks[index][key] for index in order]) for key in chunks[0]}
    for key in model.prefix_passthrough:  # inputs the rest of the model reads as they are (a detector's boxes)
        value = getattr(split, key, None)
        if key not in tensors and isinstance(value, torch.Tensor):
            tensors[key] = value.clone()
    return CachedSplit(level, tensors, split.labels.clone(), getattr(split, "lengths", None),
                       getattr(split, "positions", None))


def verify_prefix_split(model: "TransferModel", level: "PrefixLevel", split: "Split", batching: "Batching",
                        device: str, tolerance: float = 1e-4) -> float:
    """Largest difference between the full forward pass and prefix + rest on a few examples.

    The cache is only trusted when the model really can be cut at ``level`` (an architecture whose
    encoder does more than loop over its blocks would show a difference here).
    """
    import torch

    model.eval()
    batch = next(iter(batching.evaluate(split, 8))).to(device)
    with torch.inference_mode():
        full = model(**batch.inputs)
        prefix = model.prefix_outputs(level, **batch.inputs)
        prefix.update({key: batch.inputs[key] for key in model.prefix_passthrough})
        if "hidden_states" in prefix:
            prefix["attention_mask"] = batch.inputs["attention_mask"]
        if isinstance(full, torch.Tensor):
            resumed = model.forward_from_prefix(level, **prefix)
        else:  # a detector's detections (boxes above a score): its pooled pyramid is the comparable tensor
            full = model.features(**batch.inputs)
            resumed = model.features_from_prefix(level, **prefix)
    difference = float((full - resumed).abs().max())
    scale = float(full.abs().max()) or 1.0
    if difference > tolerance * max(scale, 1.0):
        raise DataError(
            f"the frozen prefix of this {type(model.backbone).__name__} cannot be cached exactly (full vs cached "
            f"forward differ by {difference:.2e}); set cache.enabled: false in params.yaml."
        )
    return difference


def save_cached_split(split: CachedSplit, path: str | Path) -> None:
    from safetensors.torch import save_file

    tensors = {f"cache.{key}": value.contiguous() for key, value in split.tensors.items()}
    tensors["labels"] = split.labels
    if split.lengths is not None:
        tensors["lengths"] = split.lengths
    if split.positions is not None:
        tensors["positions"] = split.positions
    save_file(tensors, str(path), metadata={"level": str(split.level)})


def load_cached_split(path: str | Path) -> CachedSplit:
    from safetensors import SafetensorError, safe_open

    from crosstune.errors import ArtifactError
    from crosstune.io import artifact_fix, load_tensors

    path = Path(path)
    tensors: dict[str, Any] = load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            level_text = (handle.metadata() or {})["level"]
    except (SafetensorError, KeyError) as error:
        raise ArtifactError(f"{path}: has no cache level in its metadata; {artifact_fix(path)}") from error
    level: PrefixLevel = level_text if level_text == "all" else int(level_text)
    cached = {key.removeprefix("cache."): value for key, value in tensors.items() if key.startswith("cache.")}
    return CachedSplit(level, cached, tensors["labels"], tensors.get("lengths"), tensors.get("positions"))
