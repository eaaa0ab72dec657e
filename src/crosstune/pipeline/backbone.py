"""select-and-load-backbone: rank or name the backbone, save it, and encode every split for it once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    BackboneParams,
    BaseParams,
    TextAugmentParams,
    load_section,
)
from crosstune.errors import ConfigError
from crosstune.io import write_metrics, write_metrics_csv

logger = logging.getLogger(__name__)


def backbone_stage(prepared_dir: str, model_dir: str, encoded_dir: str, summary_path: str,
                   selection_path: str, selection_table: str,
                   params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """select-and-load-backbone: pick the backbone (by name, or the best candidate by a transferability
    score), report its score (and each candidate's domain gap when a source domain is prepared), save it,
    and encode every split for it once (``source`` too: empty when there is no source domain, so the
    later stages can always depend on it)."""
    import dataclasses

    from crosstune.data.prepared_dir import (
        SPLITS,
        has_source,
        read_label_info,
        read_modality,
        read_split,
    )
    from crosstune.modalities import get_modality
    from crosstune.tasks.registry import TASKS

    base, params = load_section(BaseParams, params_path), load_section(BackboneParams, params_path)
    text_augment = load_section(TextAugmentParams, params_path)
    task_name, labels = read_label_info(prepared_dir)
    task, modality = TASKS.get(task_name), get_modality(read_modality(prepared_dir))
    splits = {name: read_split(prepared_dir, name) for name in SPLITS}
    if has_source(prepared_dir):
        splits["source"] = read_split(prepared_dir, "source")
    else:
        splits["source"] = splits["test"].iloc[:0]
    if task.model_form != "head":  # a whole recogniser, or a detector: one named backbone, nothing ranked
        return _save_named_backbone(task, params, base.seed, splits, labels, model_dir, encoded_dir, summary_path,
                                    selection_path, selection_table)
    candidates = list(params.candidates) if params.select == "score" else [params.name]
    for candidate in candidates:
        _check_backbone_modality(candidate, modality.name)
    logger.info("backbone: %s (%s), %d/%d/%d examples", candidates if params.select == "score" else params.name,
                modality.name, *(len(splits[name]) for name in SPLITS))

    source = splits["source"] if len(splits["source"]) else None
    selection, gaps, blocks = _select(params, candidates, modality, splits["train"], task, base.seed, source)
    chosen = selection.best if params.select == "score" else params.name
    params = dataclasses.replace(params, name=chosen)
    summary = modality.save_and_encode(params, base.seed, splits, task, labels, model_dir, encoded_dir, text_augment,
                                       blocks)
    summary[f"{selection.score_name}"] = selection.scores[chosen]
    write_metrics(summary_path, summary)
    _write_selection(selection, gaps, chosen, params.select, selection_path, selection_table)
    logger.info("backbone summary: %s", summary)
    return summary


def _save_named_backbone(task: Any, params: Any, seed: int, splits: dict[str, Any], labels: list[str], model_dir: str,
                         encoded_dir: str, summary_path: str, selection_path: str,
                         selection_table: str) -> dict[str, Any]:
    """The backbone stage of a task whose model is built around one named pretrained model: a whole recogniser
    at the data's window (transcription, :mod:`crosstune.transcription.encoding`), or an image backbone with the
    splits letterboxed for a detector (:mod:`crosstune.detection.encoding`). Selection records the name given,
    as ``backbone.select: name`` does for every task."""
    import pandas as pd

    if params.select != "name":
        raise ConfigError(f"params.yaml: backbone.select: {params.select}; prepare.task: {task.name} starts from one "
                          f"named backbone (transferability scores rank features for one label per example): set "
                          f"backbone.select: name and backbone.name.")
    if task.model_form == "recogniser":
        from crosstune.transcription.encoding import save_and_encode as save_recogniser

        summary = save_recogniser(params, seed, splits, model_dir, encoded_dir)
    else:
        from crosstune.detection.encoding import save_and_encode as save_detector_backbone

        _check_backbone_modality(params.name, "image")
        logger.info("backbone: %s for a detector, %d/%d/%d images", params.name,
                    *(len(splits[name]) for name in ("train", "validation", "test")))
        summary = save_detector_backbone(params, seed, splits, labels, model_dir, encoded_dir)
    write_metrics(summary_path, summary)
    write_metrics(selection_path, {"select": "name", "score": "", "selected": params.name})
    write_metrics_csv(selection_table, pd.DataFrame({"candidate": [params.name], "score": [None], "score_name": [""]}))
    return summary


def _check_backbone_modality(candidate: str, modality: str) -> None:
    """The backbone must read what the prepared data holds (its registry entry, or what its directory holds)."""
    from crosstune.backbones.registry import backbone_modality, backbone_names
    from crosstune.modalities import get_modality

    reads = backbone_modality(candidate)
    if reads != modality:
        choices = backbone_names(modality) + list(get_modality(modality).other_backbone_sources)
        raise ConfigError(f"params.yaml: backbone: {candidate!r} is a {reads} backbone but the "
                          f"prepared data holds {modality} inputs; use one of {choices}.")


def _select(params: Any, candidates: list[str], modality: Any, train: Any, task: Any, seed: int,
            source_frame: Any) -> tuple[Any, dict[str, dict[str, float]], dict[str, Any]]:
    """Transferability of each candidate on a seeded sample of the labelled training rows (the labelled
    source domain's when no target row has a label), each candidate's domain gap to the source, and the chosen
    candidate's transferability after its stem and after each block (what ``freeze.depth: auto`` reads)."""
    import numpy as np

    from crosstune.selection.candidates import (
        block_scores,
        domain_gaps,
        sample_indices,
        score_candidates,
    )

    task.transferability(params.score)  # a score the task's labels cannot take fails before any extraction
    target_pool = train[modality.name].tolist()
    labelled = task.labelled_rows(train)
    if len(labelled) < 10 and source_frame is not None:
        labelled = source_frame  # unsupervised: score on the labelled source domain
    rows = sample_indices(len(labelled), params.selection_samples, seed)
    values, labels = task.selection_examples(labelled, rows, modality.name)
    source = None
    if source_frame is not None:
        source = [source_frame[modality.name].iloc[i] for i in sample_indices(len(source_frame),
                                                                              params.selection_samples, seed)]
        target_rows = sample_indices(len(target_pool), params.selection_samples, seed)
        target_sample = [target_pool[i] for i in target_rows]
    sample = modality.selection_sample(values)
    if source is not None:
        source, target_sample = modality.selection_sample(source), modality.selection_sample(target_sample)
    train_texts = modality.vocabulary_texts(train)
    selection = score_candidates(params, candidates, modality.name, sample, labels, train_texts, seed,
                                 task=task.name)
    gaps = domain_gaps(params, candidates, modality.name, target_sample, source, train_texts, seed) \
        if source is not None else {}
    chosen = selection.best if params.select == "score" else params.name
    score_name, values = block_scores(params, chosen, modality.name, sample, labels, train_texts, seed,
                                      task=task.name)
    blocks = {"score": score_name, "samples": len(labels), "scores": [value if np.isfinite(value) else None
                                                                      for value in values]}
    return selection, gaps, blocks


def _write_selection(selection: Any, gaps: dict[str, dict[str, float]], chosen: str, method: str, json_path: str,
                     table_path: str) -> None:
    import pandas as pd

    # Scores only: the seconds each took are logged, not written, so identical runs give identical files.
    flat: dict[str, Any] = {"select": method, "score": selection.score_name, "selected": chosen}
    import math

    for candidate, value in selection.scores.items():
        flat[f"{candidate}_{selection.score_name}"] = value if math.isfinite(value) else None
        for measure, gap in gaps.get(candidate, {}).items():
            flat[f"{candidate}_{measure}"] = gap
    write_metrics(json_path, flat)
    write_metrics_csv(table_path, pd.DataFrame({"candidate": list(selection.scores),
                                        "score": [value if math.isfinite(value) else None
                                                  for value in selection.scores.values()],
                                        "score_name": selection.score_name}))
