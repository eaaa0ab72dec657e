"""Whether the frozen-prefix cache applies, decided from the attached model's config and the params alone
(no torch, so the cache stage answers "not cached" in a fraction of a second).

The cache is invalid when anything on the frozen path is random or changes during training: image
augmentation, trainable BatchNorm in frozen blocks, gradual unfreezing, LoRA adapters or two-domain batches.
The plan, and the settings it was decided from, go into ``data/features/meta.json``: finetune reads the
plan there instead of deciding again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from crosstune.modalities import modality_of_config
from crosstune.transfer_model.settings import saved_freeze

if TYPE_CHECKING:
    from crosstune.config import AugmentParams, CacheParams, FinetuneParams
    from crosstune.transfer_model.modules import PrefixLevel


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
    freeze = saved_freeze(model_config)
    depth = freeze.depth
    modality = modality_of_config(model_config)
    reasons = []
    if not cache.enabled:
        reasons.append("cache.enabled is false")
    if depth == 0:
        reasons.append("freeze.depth is 0: nothing at the bottom of the model is frozen")
    if modality.augments(augment):
        reasons.append("augment.* transforms training inputs before the frozen blocks see them")
    if modality.staged and freeze.train_batchnorm and depth != 0:
        reasons.append("freeze.train_batchnorm lets BatchNorm statistics of the frozen blocks change")
    if finetune.unfreeze != "none":
        reasons.append(f"finetune.unfreeze: {finetune.unfreeze} trains frozen blocks later on")
    if freeze.lora_r:
        reasons.append("freeze.lora_r > 0 puts trainable adapters inside every block")
    if finetune.adaptation != "none":
        reasons.append(f"finetune.adaptation: {finetune.adaptation} trains on source and target batches")
    elif has_source:
        reasons.append("a source domain is prepared (data.source): training reads source and target batches")
    if reasons:
        return CachePlan(None, "; ".join(reasons))
    num_blocks = modality.num_blocks(model_config)
    level: "PrefixLevel" = "all" if depth == "all" or depth == num_blocks else int(depth)
    return CachePlan(level)


def plan_inputs(model_config: dict[str, Any], augment: "AugmentParams", finetune: "FinetuneParams",
                has_source: bool) -> dict[str, Any]:
    """The settings a cache was built for, recorded in its ``meta.json``: finetune trains on the cache only
    when its own settings are the same (they always are under ``dvc repro``; by hand they may not be)."""
    from crosstune.config import to_dict

    augmented = modality_of_config(model_config).augments(augment)
    return {"freeze": to_dict(saved_freeze(model_config)), "augment": augmented,
            "unfreeze": finetune.unfreeze, "adaptation": finetune.adaptation, "source": has_source,
            "max_length": finetune.max_length}
