"""Frozen-prefix caching: compute what the frozen bottom of the model outputs once, train on it.

With ``freeze.depth: N`` the embeddings (or stem) and the bottom N blocks never change and, being in
eval mode, are deterministic functions of the input. Running them on every batch of every epoch is
wasted work, so the ``cache`` stage runs them once per split and stores their outputs
(``data/features/{split}.safetensors``): hidden states of the real tokens for text (their attention
masks follow from the lengths), feature maps for images, and for a fully frozen backbone
(``freeze.depth: all``) just the pooled features, so the head trains on those alone.
Training then runs only the upper blocks and the head, serving the same batches in the same order
as the uncached path (:func:`crosstune.encoding.batch_indices`), so the trained weights match it
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

    from crosstune.batching import Batching, Split
    from crosstune.config import AugmentParams, CacheParams, FinetuneParams
    from crosstune.encoding import Batch
    from crosstune.modeling import PrefixLevel, TransferModel

logger = logging.getLogger(__name__)

CACHED_SPLITS = ("train", "validation")  # the test split is seen once, by evaluate: nothing to save
META_NAME = "meta.json"


@dataclass(frozen=True)
class CachePlan:
    """Whether the cache applies and at which level; ``reason`` says why not when it does not."""

    level: Optional["PrefixLevel"]
    reason: str = ""

    @property
    def cached(self) -> bool:
        return self.level is not None


def plan_cache(model_config: dict[str, Any], cache: "CacheParams", augment: "AugmentParams",
               finetune: "FinetuneParams", has_source: bool = False) -> CachePlan:
    """Decide from the attached model's config and the params alone (no torch) whether caching is valid.

    ``has_source``: the encoded data holds a labelled source domain (two-stream training, not cached).
    """
    freeze = model_config.get("freeze", {"depth": 0})
    depth = freeze.get("depth", 0)
    image = model_config.get("modality") == "image"
    reasons = []
    if not cache.enabled:
        reasons.append("cache.enabled is false")
    if depth == 0:
        reasons.append("freeze.depth is 0: nothing at the bottom of the model is frozen")
    if image and augment.enabled:
        reasons.append("augment.* transforms training images before the frozen blocks see them")
    if image and freeze.get("train_batchnorm", False) and depth != 0:
        reasons.append("freeze.train_batchnorm lets BatchNorm statistics of the frozen blocks change")
    if finetune.unfreeze != "none":
        reasons.append(f"finetune.unfreeze: {finetune.unfreeze} trains frozen blocks later on")
    if freeze.get("lora_r", 0):
        reasons.append("freeze.lora_r > 0 puts trainable adapters inside every block")
    if finetune.adaptation != "none":
        reasons.append(f"finetune.adaptation: {finetune.adaptation} trains on source and target batches")
    elif has_source:
        reasons.append("a source domain is prepared (data.source): training reads source and target batches")
    if reasons:
        return CachePlan(None, "; ".join(reasons))
    num_blocks = _num_blocks(model_config)
    level: PrefixLevel = "all" if depth == "all" or depth == num_blocks else int(depth)
    return CachePlan(level)


def _num_blocks(model_config: dict[str, Any]) -> int | None:
    if model_config.get("modality") == "image":
        return int(model_config["backbone"]["num_blocks"])
    backbone = model_config.get("backbone_config", {})
    for key in ("num_hidden_layers", "n_layers", "num_layers", "n_layer"):
        if key in backbone:
            return int(backbone[key])
    return None


@dataclass
class CachedSplit:
    """A split's frozen-prefix outputs.

    Shape:
        features (N, H) for level "all"; or states (sum of kept tokens, H) with offsets (N + 1,) for text,
        or feature_maps (N, C, H, W) for images; lengths (N,) the untruncated token counts (text: they
        order batches exactly as the uncached path does); labels (N,).
    """

    level: "PrefixLevel"
    tensors: dict[str, "torch.Tensor"]
    labels: "torch.Tensor"
    lengths: Optional["torch.Tensor"] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class CachedBatching:
    """Batches of cached prefix outputs, in exactly the order :class:`~crosstune.batching.TextBatching` or
    :class:`~crosstune.batching.ImageBatching` would serve the raw inputs."""

    batch_size: int
    modality: str

    def _indices(self, split: CachedSplit, batch_size: int,
                 generator: "torch.Generator | None") -> Iterator["torch.Tensor"]:
        if self.modality == "text":
            from crosstune.encoding import batch_indices

            return batch_indices(split.lengths, batch_size, generator)
        from crosstune.images import image_batch_indices

        return image_batch_indices(len(split), batch_size, generator)

    def train(self, split: CachedSplit, generator: "torch.Generator") -> Iterator["Batch"]:
        return (collate_cached(split, indices) for indices in self._indices(split, self.batch_size, generator))

    def evaluate(self, split: CachedSplit, batch_size: int | None = None) -> Iterator["Batch"]:
        return (collate_cached(split, indices) for indices in self._indices(split, batch_size or self.batch_size, None))


def collate_cached(split: CachedSplit, indices: "torch.Tensor") -> "Batch":
    """The model inputs of :meth:`~crosstune.modeling.TransferModel.forward_from_prefix` for ``indices``."""
    import torch

    from crosstune.encoding import Batch

    labels = split.labels[indices]
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
    return Batch(indices, {"hidden_states": hidden, "attention_mask": attention_mask}, labels)


def build_cached_split(model: "TransferModel", level: "PrefixLevel", split: "Split", batching: "Batching",
                       batch_size: int, dtype: str, device: str) -> CachedSplit:
    """Run the frozen prefix over ``split`` once (eval mode, no gradients)."""
    import torch
    from tqdm.auto import tqdm

    storage = getattr(torch, dtype)
    model.eval()
    chunks: dict[int, dict[str, torch.Tensor]] = {}
    is_text = model.modality == "text"
    with torch.inference_mode():
        for batch in tqdm(batching.evaluate(split, batch_size), desc="cache", unit="batch", mininterval=2.0,
                          total=-(-len(split) // batch_size)):
            batch = batch.to(device)
            outputs = model.prefix_outputs(level, **batch.inputs)
            for row, index in enumerate(batch.indices.tolist()):
                if is_text and level != "all":
                    kept = int(batch.inputs["attention_mask"][row].sum())
                    chunks[index] = {"states": outputs["hidden_states"][row, :kept].to("cpu", storage)}
                else:
                    chunks[index] = {key: value[row].to("cpu", storage) for key, value in outputs.items()}
    order = range(len(split))
    if is_text and level != "all":
        states = [chunks[index]["states"] for index in order]
        offsets = torch.zeros(len(states) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor([len(rows) for rows in states]), 0)
        tensors = {"states": torch.cat(states), "offsets": offsets}
    else:
        key = next(iter(chunks[0]))
        tensors = {key: torch.stack([chunks[index][key] for index in order])}
    return CachedSplit(level, tensors, split.labels.clone(), getattr(split, "lengths", None))


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
        if "hidden_states" in prefix:
            prefix["attention_mask"] = batch.inputs["attention_mask"]
        resumed = model.forward_from_prefix(level, **prefix)
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
    save_file(tensors, str(path), metadata={"level": str(split.level)})


def load_cached_split(path: str | Path) -> CachedSplit:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the cache stage first (dvc repro cache).")
    tensors: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as handle:
        level_text = handle.metadata()["level"]
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    level: PrefixLevel = level_text if level_text == "all" else int(level_text)
    cached = {key.removeprefix("cache."): value for key, value in tensors.items() if key.startswith("cache.")}
    return CachedSplit(level, cached, tensors["labels"], tensors.get("lengths"))
