"""evaluate: test metrics, predictions, misclassified examples and baselines; the negative-transfer
guard and, with a source domain, the domain gap before and after fine-tuning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    BaseParams,
    EvaluateParams,
    load_section,
)
from crosstune.io import write_metrics, write_metrics_csv
from crosstune.tasks.base import Task

logger = logging.getLogger(__name__)


def evaluate_stage(model_dir: str, encoded_dir: str, prepared_dir: str, metrics_path: str,
                   predictions_path: str, examples_path: str,
                   params_path: str = DEFAULT_PARAMS_PATH, initial_dir: str | None = None,
                   scratch_dir: str | None = None, probe_dir: str | None = None,
                   summary_path: str | None = None) -> dict[str, Any]:
    """evaluate: test-split metrics, per-class report, predictions, misclassified examples and baselines;
    with ``evaluate.guard`` (and ``scratch_dir``, ``probe_dir``) the negative-transfer guard's verdict on
    the scratch and probe stages' models (:mod:`crosstune.evaluation.guard`); with a source domain (and
    ``initial_dir``), the domain gap before and after fine-tuning. ``summary_path`` also gets
    :func:`headline_metrics`, the one file dvc.yaml declares as metrics."""
    metrics = _evaluate(model_dir, encoded_dir, prepared_dir, metrics_path, predictions_path, examples_path,
                        params_path, initial_dir, scratch_dir, probe_dir)
    if summary_path is not None:
        from crosstune.data.prepared_dir import read_label_info
        from crosstune.tasks.registry import TASKS

        write_metrics(summary_path, headline_metrics(metrics, TASKS.get(read_label_info(prepared_dir)[0])))
    return metrics


def headline_metrics(metrics: dict[str, Any], task: Task) -> dict[str, Any]:
    """What `dvc metrics show` and `dvc exp show` list for a run: the task's summary test metrics and which model
    was exported. The rest of the evaluation (per class, baselines, the guard's comparisons) stays in the
    metrics file beside it, which the report, `dvc metrics diff --targets FILE` and the experiments commands
    read: declared as metrics, its ~45 keys made `dvc metrics show` one 2,000-character-wide table."""
    keys = (*task.summary_metrics, "exported_model")
    return {key: metrics[key] for key in keys if key in metrics}


def _evaluate(model_dir: str, encoded_dir: str, prepared_dir: str, metrics_path: str, predictions_path: str,
              examples_path: str, params_path: str, initial_dir: str | None, scratch_dir: str | None,
              probe_dir: str | None) -> dict[str, Any]:
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared_dir import read_split
    from crosstune.evaluation.features import PooledFeatures
    from crosstune.inference.outputs import predict_outputs, score_outputs
    from crosstune.runtime import setup
    from crosstune.tasks.registry import TASKS
    from crosstune.transfer_model.settings import saved_max_length
    from crosstune.transfer_model.storage import load_transfer_model

    base, params = load_section(BaseParams, params_path), load_section(EvaluateParams, params_path)
    form = _model_form(prepared_dir)
    if form == "recogniser":
        from crosstune.transcription.evaluation import evaluate_recogniser

        return evaluate_recogniser(model_dir, encoded_dir, prepared_dir, metrics_path, predictions_path,
                                   examples_path, params, base, probe_dir)
    if form == "detector":
        from crosstune.detection.evaluation import evaluate_detector

        return evaluate_detector(model_dir, encoded_dir, prepared_dir, metrics_path, predictions_path, examples_path,
                                 params, base, scratch_dir, probe_dir)
    device = setup(base)
    model, config = load_transfer_model(model_dir)
    model.to(device)
    task, labels = TASKS.get(config["task"]), config["labels"]
    splits = {name: load_any_split(Path(encoded_dir) / f"{name}.safetensors")
              for name in ("train", "validation", "test", "source")}
    batching = batching_for(config, params.batch_size, saved_max_length(config, model_dir))
    outputs = predict_outputs(model, splits["test"], batching, device)
    metrics = score_outputs(outputs, splits["test"], task.name, labels)
    has_source = len(splits["source"]) > 0
    guarded = params.guard != "off" and scratch_dir is not None
    if guarded and probe_dir is None:
        from crosstune.errors import ArtifactError

        raise ArtifactError(f"params.yaml: evaluate.guard: {params.guard} compares the fine-tuned model with the "
                            f"scratch and the probe models, but no probe model was given; pass --probe "
                            f"models/probe (dvc.yaml does), or set evaluate.guard: off.")
    exported, exported_outputs = "finetuned", outputs
    if guarded:
        from crosstune.evaluation.guard import judge_transfer

        scratch, skipped = _load_scratch(scratch_dir, params.guard)
        candidates = {"finetuned": model, "probe": load_transfer_model(probe_dir)[0].to(device)}
        if scratch is not None:
            candidates["scratch"] = scratch.to(device)
        outcome = judge_transfer(candidates, splits, batching, device, params.guard, metrics, task, skipped)
        if outcome.exported != "finetuned":
            exported, exported_outputs = outcome.exported, outcome.test_outputs[outcome.exported]
            metrics = score_outputs(exported_outputs, splits["test"], task.name, labels)
        metrics.update(outcome.metrics)
    metrics["exported_model"] = exported
    if has_source and initial_dir is not None:
        attached = load_transfer_model(initial_dir)[0].to(device)  # the pretrained, untrained model
        metrics.update(_domain_gaps(PooledFeatures(attached, batching, device), PooledFeatures(model, batching, device),
                                    splits, base.seed))
    test_frame = read_split(prepared_dir, "test")
    metrics["test_size"] = len(test_frame)  # examples (a long tagged sentence is two windows)
    _write_evaluation(exported_outputs, splits, test_frame, prepared_dir, config, params, base.seed, task, metrics,
                      metrics_path, predictions_path, examples_path)
    return metrics


def _model_form(prepared_dir: str) -> str:
    """The prepared task's model form (:attr:`crosstune.tasks.base.Task.model_form`)."""
    from crosstune.data.prepared_dir import read_label_info
    from crosstune.tasks.registry import TASKS

    return TASKS.get(read_label_info(prepared_dir)[0]).model_form


def _load_scratch(scratch_dir: str, guard: str) -> tuple[Any, Any]:
    """The scratch stage's trained model, or None and the stage's reason (``ScratchDecision``) for not training
    it; a clear error when that stage ran with the guard off."""
    from crosstune.errors import ArtifactError
    from crosstune.evaluation.guard import ScratchDecision
    from crosstune.io import read_json
    from crosstune.transfer_model.settings import GUARD_RECORD
    from crosstune.transfer_model.storage import load_transfer_model

    record = read_json(Path(scratch_dir) / GUARD_RECORD) if (Path(scratch_dir) / GUARD_RECORD).is_file() else {}
    if record.get("guard") == "off":
        raise ArtifactError(f"{scratch_dir}: the scratch stage ran with evaluate.guard: off, but evaluate has "
                            f"evaluate.guard: {guard}; run `dvc repro` (or `dvc repro scratch`) to train it.")
    if record.get("skipped"):
        return None, ScratchDecision(False, record["skipped"], record.get("evidence", {}))
    return load_transfer_model(scratch_dir)[0], None


def _domain_gaps(before: Any, after: Any, splits: dict[str, Any], seed: int) -> dict[str, float]:
    """Proxy A-distance of source vs target (training pool) features, before (the attached pretrained
    model) and after fine-tuning; ``before``/``after`` are :class:`crosstune.evaluation.features.PooledFeatures`."""
    from crosstune.selection.domain_gap import domain_gap

    gaps = {f"proxy_a_distance_{name}": domain_gap(features("source", splits["source"]),
                                                   features("train", splits["train"]), seed)
            for name, features in (("before", before), ("after", after))}
    logger.info("domain gap (proxy A-distance, source vs target): %.3f before, %.3f after",
                gaps["proxy_a_distance_before"], gaps["proxy_a_distance_after"])
    return gaps


def _write_evaluation(outputs: Any, splits: dict[str, Any], test_frame: Any, prepared_dir: str, config: dict[str, Any],
                      params: Any, seed: int, task: Task, metrics: dict[str, Any], metrics_path: str,
                      predictions_path: str, examples_path: str) -> None:
    """Predictions table, the task's picture of test examples, baselines and the metrics file (``config``: the
    model's; ``test_frame``: the prepared test table)."""
    from crosstune.evaluation.baselines import baseline_inputs
    from crosstune.modalities import get_modality

    labels, modality = config["labels"], get_modality(config["modality"])
    test_split = splits["test"]
    table = test_frame[[modality.name, "label", *task.prepared_columns]].copy()
    for column, values in task.prediction_columns(outputs, test_split.labels, labels).items():
        table[column] = values
    task.examples_figure(examples_path, table, modality.figure_inputs(table, test_split, config))
    train_inputs, train_targets, test_inputs = baseline_inputs(splits, prepared_dir, config, "test")
    metrics.update(_baseline_metrics(params.baselines, config, test_split.labels.tolist(), train_inputs,
                                     train_targets, test_inputs, seed, task, metrics[task.headline]))
    write_metrics(metrics_path, metrics)
    write_metrics_csv(predictions_path, table)
    logger.info("test %s", {key: round(value, 4) for key, value in metrics.items()
                            if isinstance(value, float) and not key.startswith(tuple(labels))})


def _baseline_metrics(names: Any, config: dict[str, Any], targets: list[Any], train_inputs: Any, train_targets: Any,
                      test_inputs: Any, seed: int, task: Task, model_score: float) -> dict[str, Any]:
    """Each baseline's scores, and the fine-tuned model's gain over the best of them."""
    from crosstune.evaluation.baselines import baseline_scores

    headline = task.headline
    metrics: dict[str, Any] = {}
    best: tuple[str, float] | None = None
    for name, scores in baseline_scores(names, config, targets, train_inputs, train_targets, test_inputs,
                                        seed).items():
        for key in task.baseline_metrics:
            if key in scores:
                metrics[f"baseline_{name}_{key}"] = scores[key]
        if best is None or task.is_better(headline, scores[headline], best[1]):
            best = (name, scores[headline])
    if best is not None:
        gain = task.gain(headline, model_score, best[1])
        metrics[f"gain_over_best_baseline_{headline}"] = gain
        metrics["beats_all_baselines"] = bool(gain > 0)
        if gain <= 0:
            logger.warning("the fine-tuned model's test %s %.4f does not beat baseline %r (%.4f): transfer did not "
                           "pay off here; try another freeze.depth, finetune.lr or backbone.",
                           headline, model_score, best[0], best[1])
    return metrics
