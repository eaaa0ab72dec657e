"""One function per pipeline stage: what `stages/*.py` call after parsing their paths.

Each stage's logic lives in its own module here (``crosstune.pipeline.evaluate`` for evaluate, ...), so
dvc.yaml can make each stage depend on exactly its own code: editing the evaluation reruns evaluate, not
fine-tuning. Each function loads only its own params sections, validates everything before writing, and
writes its outputs atomically, so a failed stage leaves earlier outputs as they were.
"""

from crosstune.pipeline.attach_head import attach_head_stage
from crosstune.pipeline.backbone import backbone_stage
from crosstune.pipeline.cache import cache_stage
from crosstune.pipeline.evaluate import evaluate_stage
from crosstune.pipeline.finetune import finetune_stage
from crosstune.pipeline.prepare import prepare_stage

__all__ = ["attach_head_stage", "backbone_stage", "cache_stage", "evaluate_stage", "finetune_stage", "prepare_stage"]
