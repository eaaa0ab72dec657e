"""freeze-and-attach-head: a new task head on the saved backbone, frozen by policy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from crosstune.config import DEFAULT_PARAMS_PATH, load_section, to_dict
from crosstune.errors import ArtifactError
from crosstune.io import (
    artifact_fix,
    atomic_directory,
    load_tensors,
    load_weights,
    read_artifact_json,
    write_metrics,
)

logger = logging.getLogger(__name__)


def _load_saved_backbone(directory: Path) -> tuple[Any, Any]:
    """The backbone stage's directory: a Hugging Face encoder + tokenizer, or a vision or audio backbone."""
    from crosstune.model.transfer_model import (
        STAGED_MODALITIES,
        rebuild_staged_backbone,
    )

    config = read_artifact_json(directory / "config.json")
    if config.get("modality") in STAGED_MODALITIES:
        backbone = rebuild_staged_backbone(config)
        load_weights(backbone, directory / "model.safetensors")
        return backbone, None
    from transformers import AutoModel, AutoTokenizer

    load_tensors(directory / "model.safetensors")  # a damaged file: one clear line, not a loader traceback
    try:
        return AutoModel.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{directory}: the saved backbone does not load ({error}); "
                            f"{artifact_fix(directory)}") from error


def attach_head_stage(backbone_dir: str, prepared_dir: str, model_dir: str, report_path: str,
                      params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """freeze-and-attach-head: put a new head on the backbone and freeze by policy."""
    from crosstune.data.prepared import read_label_info
    from crosstune.freezing.policy import apply_freeze
    from crosstune.model.transfer_model import build_transfer_model, save_transfer_model

    base = load_section("base", params_path)
    freeze, head = load_section("freeze", params_path), load_section("head", params_path)
    task, labels = read_label_info(prepared_dir)
    backbone, tokenizer = _load_saved_backbone(Path(backbone_dir))
    model = build_transfer_model(backbone, task=task, labels=labels, head_type=head.type, pooling=head.pooling,
                                 dropout=head.dropout, hidden_dim=head.hidden_dim, seed=base.seed)
    report = apply_freeze(model, freeze.depth, freeze.patterns, freeze.train_batchnorm).as_dict()
    model.spec["freeze"] = to_dict(freeze)
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging, tokenizer)
    if freeze.lora_r:
        # Adapters are added (seeded) at training time and merged before saving; count them here.
        from crosstune.freezing.lora import apply_lora

        adapters = apply_lora(model, freeze.lora_r, freeze.lora_alpha, freeze.lora_dropout, freeze.lora_targets,
                              base.seed)
        head_parameters = sum(p.numel() for p in model.head.parameters())
        report.update({"lora_r": freeze.lora_r, "lora_parameters": adapters,
                       "trainable_parameters": adapters + head_parameters,
                       "trainable_fraction": round((adapters + head_parameters) / report["total_parameters"], 6)})
    write_metrics(report_path, report)
    return report
