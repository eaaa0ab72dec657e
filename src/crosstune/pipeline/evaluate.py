"""evaluate: test metrics, predictions, misclassified examples and baselines; the negative-transfer
guard and, with a source domain, the domain gap before and after fine-tuning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from crosstune.config import DEFAULT_PARAMS_PATH, load_section, to_dict
from crosstune.io import atomic_directory, write_csv, write_json

logger = logging.getLogger(__name__)


def evaluate_stage(model_dir: str, encoded_dir: str, prepared_dir: str, metrics_path: str,
                   predictions_path: str, examples_path: str,
                   params_path: str = DEFAULT_PARAMS_PATH, initial_dir: str | None = None,
                   scratch_dir: str | None = None) -> dict[str, Any]:
    """evaluate: test-split metrics, per-class report, predictions, misclassified examples and baselines;
    with ``evaluate.guard`` (and ``initial_dir``) the negative-transfer guard (:mod:`crosstune.guard`),
    whose scratch model goes to ``scratch_dir``; with a source domain, the domain gap before and after."""
    from crosstune.batching import batching_for, load_any_split
    from crosstune.guard import FeatureCache
    from crosstune.inference import predict_outputs, score_outputs
    from crosstune.modeling import load_transfer_model
    from crosstune.runtime import setup

    base, params = load_section("base", params_path), load_section("evaluate", params_path)
    device = setup(base)
    model, config = load_transfer_model(model_dir)
    model.to(device)
    task, labels, modality = config["task"], config["labels"], model.modality
    headline = "f1_macro" if task == "classification" else "r2"
    splits = {name: load_any_split(Path(encoded_dir) / f"{name}.safetensors")
              for name in ("train", "validation", "test", "source")}
    batching = batching_for(config, params.batch_size, int(config.get("max_length", 512)))
    outputs = predict_outputs(model, splits["test"], batching, device)
    metrics = score_outputs(outputs, splits["test"], task, labels)
    has_source = len(splits["source"]) > 0
    guarded = params.guard != "off" and initial_dir is not None
    # The attached (pretrained, untrained) model, loaded once: the scratch model copies its architecture
    # and head, and its features serve the linear probe and the domain gap alike.
    pretrained, attached_config = None, None
    if initial_dir is not None and (guarded or has_source):
        attached, attached_config = load_transfer_model(initial_dir)
        pretrained = FeatureCache(attached.to(device), batching, device)
    exported, exported_outputs = "finetuned", outputs
    if guarded:
        outcome = _guard(model, config, pretrained, attached_config, initial_dir, splits, batching, params.guard,
                         params_path, base, device, metrics, headline, scratch_dir)
        if outcome.use_scratch:
            exported, exported_outputs = "scratch", outcome.scratch_outputs
            metrics = score_outputs(exported_outputs, splits["test"], task, labels)
        metrics.update(outcome.metrics)
    elif scratch_dir is not None:
        with atomic_directory(scratch_dir) as staging:
            write_json(staging / "guard.json", {"guard": "off", "scratch_model": None})
    metrics["exported_model"] = exported
    if has_source and pretrained is not None:
        metrics.update(_domain_gaps(pretrained, FeatureCache(model, batching, device), splits, base.seed))
    metrics["test_size"] = len(splits["test"])
    _write_evaluation(exported_outputs, splits, prepared_dir, task, labels, modality, params, base.seed, headline,
                      metrics, metrics_path, predictions_path, examples_path)
    return metrics


def _guard(model: Any, config: dict[str, Any], pretrained: Any, attached_config: dict[str, Any], initial_dir: str,
           splits: dict[str, Any], batching: Any, mode: str, params_path: str, base: Any, device: str,
           metrics: dict[str, Any], headline: str, scratch_dir: str | None) -> Any:
    """Run the guard (:func:`crosstune.guard.run_guard`) with the finetune params, and save its scratch model
    (with the params that trained it) to ``scratch_dir``."""
    from crosstune.batching import batching_for
    from crosstune.guard import run_guard
    from crosstune.modeling import load_tokenizer, save_transfer_model

    finetune, augment = load_section("finetune", params_path), load_section("augment", params_path)
    train_batching = batching_for(config, finetune.batch_size, finetune.max_length, augment)
    outcome = run_guard(model, pretrained, attached_config, splits, batching, train_batching, finetune, base.seed,
                        device, mode, metrics, headline)
    if scratch_dir is not None:
        scratch = outcome.scratch.to("cpu")
        tokenizer = load_tokenizer(initial_dir) if scratch.modality == "text" else None
        with atomic_directory(scratch_dir) as staging:
            save_transfer_model(scratch, staging, tokenizer, extra={"max_length": config.get("max_length", 512),
                                                                   "freeze": {"depth": 0, "patterns": []}})
            write_json(staging / "guard.json", {"guard": mode, "scratch_model": "random initialisation, "
                                                "same architecture, data and finetune params"})
            write_json(staging / "params.json", {"base": to_dict(base), "finetune": to_dict(finetune),
                                                 "freeze": {"depth": 0, "patterns": []}, "head": config["head"],
                                                 "pooling": config.get("pooling"), "initialisation": "random"})
    return outcome


def _domain_gaps(before: Any, after: Any, splits: dict[str, Any], seed: int) -> dict[str, float]:
    """Proxy A-distance of source vs target (training pool) features, before (the attached pretrained
    model) and after fine-tuning; ``before``/``after`` are :class:`crosstune.guard.FeatureCache` s."""
    from crosstune.guard import domain_gap

    gaps = {f"proxy_a_distance_{name}": domain_gap(features("source", splits["source"]),
                                                   features("train", splits["train"]), seed)
            for name, features in (("before", before), ("after", after))}
    logger.info("domain gap (proxy A-distance, source vs target): %.3f before, %.3f after",
                gaps["proxy_a_distance_before"], gaps["proxy_a_distance_after"])
    return gaps


def _write_evaluation(outputs: Any, splits: dict[str, Any], prepared_dir: str, task: str, labels: list[str],
                      modality: str, params: Any, seed: int, headline: str, metrics: dict[str, Any],
                      metrics_path: str, predictions_path: str, examples_path: str) -> None:
    """Predictions table, misclassified figure, baselines and the metrics file."""
    import pandas as pd

    from crosstune.data import has_source, read_split
    from crosstune.figures import misclassified_figure
    from crosstune.inference import outputs_to_predictions

    predicted, confidence = outputs_to_predictions(outputs, task)
    test_split = splits["test"]
    test_frame = read_split(prepared_dir, "test")
    table = pd.DataFrame({modality: test_frame[modality], "label": test_frame["label"]})
    if task == "classification":
        table["predicted"] = [labels[i] for i in predicted]
        table["confidence"] = confidence
        misclassified_figure(examples_path, table["label"].tolist(), table["predicted"].tolist(),
                             images=test_split.images if modality == "image" else None,
                             texts=table[modality].tolist() if modality == "text" else None)
    else:
        table["predicted"] = predicted
        misclassified_figure(examples_path, [], [], texts=[])
    # Baselines learn from every labelled training row: the target's, and the source domain's.
    frames = [read_split(prepared_dir, "train")] + ([read_split(prepared_dir, "source")] if has_source(prepared_dir)
                                                    else [])
    if modality == "image":
        import numpy as np

        from crosstune.baselines import image_pixels

        parts = [splits["train"]] + ([splits["source"]] if len(splits["source"]) else [])
        masks = [part.labels >= 0 for part in parts]
        train_inputs = np.concatenate([image_pixels(part.images[mask]) for part, mask in zip(parts, masks)])
        train_targets = [labels[int(i)] for part, mask in zip(parts, masks) for i in part.labels[mask]]
        test_inputs = image_pixels(test_split.images)
    else:
        training = pd.concat(frames, ignore_index=True)
        if task == "classification":
            training = training[training["label"] != ""]
        train_inputs, train_targets, test_inputs = training["text"], training["label"], test_frame["text"]
    metrics.update(_baseline_metrics(params.baselines, task, modality, labels, test_split.labels.tolist(),
                                     train_inputs, train_targets, test_inputs, seed, headline, metrics[headline]))
    write_json(metrics_path, metrics)
    write_csv(predictions_path, table)
    logger.info("test %s", {key: round(value, 4) for key, value in metrics.items()
                            if isinstance(value, float) and not key.startswith(tuple(labels))})


def _baseline_metrics(names: Any, task: str, modality: str, labels: list[str], targets: list[Any],
                      train_inputs: Any, train_targets: Any, test_inputs: Any, seed: int, headline: str,
                      model_score: float) -> dict[str, Any]:
    """Each baseline's scores, and the fine-tuned model's gain over the best of them."""
    from crosstune.baselines import run_baseline
    from crosstune.metrics import classification_metrics, regression_metrics

    metrics: dict[str, Any] = {}
    best: tuple[str, float] | None = None
    for name in names:
        predictions = run_baseline(name, task, train_inputs, train_targets, test_inputs, seed, modality)
        if task == "classification":
            index = {label: position for position, label in enumerate(labels)}
            scores = classification_metrics(targets, [index[label] for label in predictions], labels)
        else:
            scores = regression_metrics(targets, predictions)
        for key in ("accuracy", "f1_macro", "f1_weighted", "mse", "mae", "r2"):
            if key in scores:
                metrics[f"baseline_{name}_{key}"] = scores[key]
        if best is None or scores[headline] > best[1]:
            best = (name, scores[headline])
    if best is not None:
        gain = model_score - best[1]
        metrics[f"gain_over_best_baseline_{headline}"] = gain
        metrics["beats_all_baselines"] = bool(gain > 0)
        if gain <= 0:
            logger.warning("the fine-tuned model's test %s %.4f does not beat baseline %r (%.4f): transfer did not "
                           "pay off here; try another freeze.depth, finetune.lr or backbone.",
                           headline, model_score, best[0], best[1])
    return metrics
