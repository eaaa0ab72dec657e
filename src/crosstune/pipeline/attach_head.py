"""freeze-and-attach-head: a new task head on the saved backbone, frozen by policy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    BaseParams,
    FreezeParams,
    HeadParams,
    load_section,
    to_dict,
)
from crosstune.errors import ArtifactError
from crosstune.io import (
    atomic_directory,
    read_artifact_json,
    write_metrics,
    write_metrics_csv,
)
from crosstune.tasks.registry import TASKS

logger = logging.getLogger(__name__)


def _load_saved_backbone(directory: Path) -> tuple[Any, Any]:
    """The backbone stage's directory, loaded as its modality saves backbones (with the tokenizer, or None)."""
    from crosstune.modalities import modality_of_config

    config = read_artifact_json(directory / "config.json")
    return modality_of_config(config).load_saved_backbone(directory)


def attach_head_stage(backbone_dir: str, prepared_dir: str, model_dir: str, report_path: str,
                      params_path: str = DEFAULT_PARAMS_PATH, blocks_path: str | None = None) -> dict[str, Any]:
    """freeze-and-attach-head: put a new head on the backbone and freeze by policy; ``freeze.depth: auto`` takes
    the depth the backbone's per-block transferability recommends (:mod:`crosstune.freezing.auto_depth`), which
    is reported whatever the depth, with the per-block scores (``blocks_path``: a table for ``dvc plots``)."""
    import dataclasses

    from crosstune.data.prepared_dir import read_input_column, read_label_info, read_lowercase
    from crosstune.freezing.auto_depth import read_block_scores, recommend_depth
    from crosstune.freezing.policy import apply_freeze
    from crosstune.heads.registry import check_head_params
    from crosstune.transfer_model.modules import build_transfer_model
    from crosstune.transfer_model.storage import save_transfer_model

    base = load_section(BaseParams, params_path)
    freeze, head = load_section(FreezeParams, params_path), load_section(HeadParams, params_path)
    task, labels = read_label_info(prepared_dir)
    if TASKS.get(task).model_form == "recogniser":
        return _attach_recogniser(backbone_dir, prepared_dir, model_dir, report_path, freeze, base, blocks_path)
    if TASKS.get(task).model_form == "detector":
        from crosstune.detection.stages import attach_detector

        report = attach_detector(backbone_dir, prepared_dir, model_dir, freeze, head, base.seed)
        if blocks_path is not None:
            _write_block_table(blocks_path, None, freeze.depth)
        write_metrics(report_path, report)
        return report
    check_head_params(head)
    blocks = read_block_scores(backbone_dir)
    recommendation = recommend_depth(blocks["scores"], blocks["score"]) if blocks else None
    requested = freeze.depth
    if requested == "auto":
        if recommendation is None:
            raise ArtifactError(f"{Path(backbone_dir) / 'block_scores.json'}: missing, and freeze.depth: auto reads "
                                f"it; rebuild the backbone stage's output with `dvc repro -f backbone`.")
        freeze = dataclasses.replace(freeze, depth=recommendation.depth)
        logger.info("freeze.depth: auto -> %d: %s", recommendation.depth, recommendation.reason)
    elif recommendation is not None:
        logger.info("freeze.depth: %s (auto would choose %d: %s)", requested, recommendation.depth,
                    recommendation.reason)
    backbone, tokenizer = _load_saved_backbone(Path(backbone_dir))
    model = build_transfer_model(backbone, task=task, labels=labels, head_type=head.type, pooling=head.pooling,
                                 dropout=head.dropout, hidden_dim=head.hidden_dim, seed=base.seed)
    report = apply_freeze(model, freeze.depth, freeze.patterns, freeze.train_batchnorm).as_dict()
    report["depth_requested"] = requested
    if recommendation is not None:
        report.update(recommendation.as_metrics())
    if blocks_path is not None:
        _write_block_table(blocks_path, recommendation, freeze.depth)
    model.spec["freeze"] = to_dict(freeze)  # the depth chosen, never "auto": later stages read what was applied
    model.spec["input_column"] = read_input_column(prepared_dir)
    if read_lowercase(prepared_dir):  # recorded only when on: predict and the export lowercase new texts too
        model.spec["lowercase"] = True
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


def _attach_recogniser(backbone_dir: str, prepared_dir: str, model_dir: str, report_path: str, freeze: Any,
                       base: Any, blocks_path: str | None) -> dict[str, Any]:
    """A whole recogniser (transcription): its pretrained decoder is the head, so nothing new is attached; the
    freeze policy (``freeze.depth`` in encoder blocks, ``freeze.patterns`` for the decoder) is applied and
    recorded as for every model."""
    from crosstune.data.prepared_dir import read_input_column
    from crosstune.errors import ConfigError
    from crosstune.freezing.policy import apply_freeze
    from crosstune.transcription.storage import load_recogniser, load_recogniser_tokenizer, save_recogniser

    if freeze.depth == "auto":
        raise ConfigError("params.yaml: freeze.depth: auto scores encoder blocks for one label per clip; for "
                          "transcription give a number of encoder blocks (0-4) or all.")
    model, _ = load_recogniser(backbone_dir)
    report = apply_freeze(model, freeze.depth, freeze.patterns, freeze.train_batchnorm).as_dict()
    report["depth_requested"] = freeze.depth
    if blocks_path is not None:
        _write_block_table(blocks_path, None, freeze.depth)
    model.spec["freeze"] = to_dict(freeze)
    model.spec["input_column"] = read_input_column(prepared_dir)
    with atomic_directory(model_dir) as staging:
        save_recogniser(model, staging, load_recogniser_tokenizer(backbone_dir))
    if freeze.lora_r:
        from crosstune.freezing.lora import apply_lora

        adapters = apply_lora(model, freeze.lora_r, freeze.lora_alpha, freeze.lora_dropout, freeze.lora_targets,
                              base.seed)
        trainable = adapters + sum(p.numel() for p in model.head.parameters() if p.requires_grad)
        report.update({"lora_r": freeze.lora_r, "lora_parameters": adapters, "trainable_parameters": trainable,
                       "trainable_fraction": round(trainable / report["total_parameters"], 6)})
    write_metrics(report_path, report)
    return report


def _write_block_table(path: str, recommendation: Any, depth: int | str) -> None:
    """One row per block (0 = the stem's output): its transferability score and whether it is frozen."""
    import pandas as pd

    scores = recommendation.scores if recommendation is not None else ()
    frozen = len(scores) if depth == "all" else int(depth)
    write_metrics_csv(path, pd.DataFrame({
        "block": list(range(len(scores))), "score": list(scores),
        "score_name": [recommendation.score if recommendation else ""] * len(scores),
        "frozen": [int(index <= frozen and frozen > 0) for index in range(len(scores))]}))
