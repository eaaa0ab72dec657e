"""One function per pipeline stage: what `stages/*.py` call after parsing their paths.

Each function loads only its own params sections, validates everything before writing, and
writes its outputs atomically, so a failed stage leaves earlier outputs as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from crosstune.config import DEFAULT_PARAMS_PATH, load_section, to_dict
from crosstune.io import atomic_directory, read_json, write_csv, write_json

logger = logging.getLogger(__name__)


def prepare_stage(train_path: str, test_path: str | None, out_dir: str,
                  params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """prepare-target-data: validate, clean and split; writes ``out_dir``."""
    from crosstune.data import prepare_target_data, write_prepared

    base, params = load_section("base", params_path), load_section("prepare", params_path)
    logger.info("prepare: train=%s test=%s params=%s", train_path, test_path, to_dict(params))
    data = prepare_target_data(train_path, test_path, params, base.seed)
    write_prepared(data, out_dir, params)
    return data.summary


def backbone_stage(prepared_dir: str, model_dir: str, encoded_dir: str, summary_path: str,
                   params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """select-and-load-backbone: load the encoder, save it, and tokenize every split with it."""
    import torch

    from crosstune.backbones import describe_backbone, load_backbone, save_backbone
    from crosstune.data import SPLITS, read_label_info, read_split
    from crosstune.encoding import encode_texts, save_split

    base, params = load_section("base", params_path), load_section("backbone", params_path)
    task, labels = read_label_info(prepared_dir)
    splits = {name: read_split(prepared_dir, name) for name in SPLITS}
    logger.info("backbone: %s, max_length=%d", params.name, params.max_length)
    loaded = load_backbone(params, splits["train"]["text"].tolist(), base.seed)
    summary = describe_backbone(loaded, params.name)
    index = {label: position for position, label in enumerate(labels)}
    with atomic_directory(model_dir) as staging:
        save_backbone(loaded, staging)
    with atomic_directory(encoded_dir) as staging:
        for name, frame in splits.items():
            if task == "classification":
                targets = torch.tensor([index[label] for label in frame["label"]], dtype=torch.int64)
            else:
                targets = torch.tensor(frame["label"].to_numpy(), dtype=torch.float32)
            encoded = encode_texts(loaded.tokenizer, frame["text"].tolist(), targets, params.max_length)
            save_split(encoded, staging / f"{name}.safetensors")
            lengths = encoded.lengths.float()
            summary[f"{name}_mean_tokens"] = round(float(lengths.mean()), 2)
            summary[f"{name}_truncated"] = int((encoded.lengths >= params.max_length).sum())
        write_json(staging / "meta.json", {"backbone": params.name, "max_length": params.max_length,
                                           "pad_token_id": loaded.tokenizer.pad_token_id})
    write_json(summary_path, summary)
    logger.info("backbone summary: %s", summary)
    return summary


def attach_head_stage(backbone_dir: str, prepared_dir: str, model_dir: str, report_path: str,
                      params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """freeze-and-attach-head: put a new head on the backbone and freeze by policy."""
    from transformers import AutoModel, AutoTokenizer

    from crosstune.data import read_label_info
    from crosstune.freezing import apply_freeze
    from crosstune.modeling import build_transfer_model, save_transfer_model

    base = load_section("base", params_path)
    freeze, head = load_section("freeze", params_path), load_section("head", params_path)
    task, labels = read_label_info(prepared_dir)
    backbone = AutoModel.from_pretrained(backbone_dir)
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    model = build_transfer_model(backbone, task=task, labels=labels, head_type=head.type, pooling=head.pooling,
                                 dropout=head.dropout, hidden_dim=head.hidden_dim, seed=base.seed)
    report = apply_freeze(model, freeze.depth, freeze.patterns)
    model.spec["freeze"] = to_dict(freeze)
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging, tokenizer)
    write_json(report_path, report.as_dict())
    return report.as_dict()


def finetune_stage(initial_dir: str, encoded_dir: str, model_dir: str, live_dir: str,
                   params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """fine-tune: train the attached model and save the best epoch's weights."""
    from dvclive import Live

    from crosstune.encoding import load_split
    from crosstune.freezing import apply_freeze
    from crosstune.modeling import load_tokenizer, load_transfer_model, save_transfer_model
    from crosstune.runtime import setup
    from crosstune.training import train

    base, params = load_section("base", params_path), load_section("finetune", params_path)
    device = setup(base)
    model, config = load_transfer_model(initial_dir)
    freeze = config.get("freeze", {"depth": 0, "patterns": []})
    report = apply_freeze(model, freeze["depth"], freeze["patterns"])
    train_split = load_split(Path(encoded_dir) / "train.safetensors")
    validation_split = load_split(Path(encoded_dir) / "validation.safetensors")
    logger.info("finetune: %d train / %d validation examples, %d trainable of %d parameters, device %s, params %s",
                len(train_split), len(validation_split), report.trainable_parameters, report.total_parameters,
                device, to_dict(params))
    with Live(live_dir, dvcyaml=None, save_dvc_exp=False, report=None) as live:
        result = train(model, train_split, validation_split, params, base.seed, device, live)
        # Only deterministic values in outputs: timings (logged by `train`) would make identical runs
        # differ in `dvc metrics diff` and in dvc.lock's hashes.
        live.summary.update({
            "best_epoch": result.best_epoch,
            "best_validation": {key: value for key, value in result.best_metrics.items() if key != "epoch"},
            "trainable_parameters": report.trainable_parameters,
        })
    model.to("cpu")
    resolved = {"base": to_dict(base), "finetune": to_dict(params), "freeze": freeze, "head": config["head"],
                "pooling": config["pooling"]}
    with atomic_directory(model_dir) as staging:
        save_transfer_model(model, staging, load_tokenizer(initial_dir),
                            extra={"max_length": params.max_length, "freeze": freeze})
        write_json(staging / "params.json", resolved)
        write_json(staging / "train_history.json", result.history)

    return {"best_epoch": result.best_epoch, **result.best_metrics}


def evaluate_stage(model_dir: str, encoded_dir: str, prepared_dir: str, metrics_path: str,
                   predictions_path: str, params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """evaluate: test-split metrics, per-class report, predictions and baselines."""
    import pandas as pd

    from crosstune.baselines import run_baseline
    from crosstune.data import read_split
    from crosstune.encoding import load_split
    from crosstune.inference import outputs_to_predictions, predict_outputs
    from crosstune.metrics import classification_metrics, regression_metrics
    from crosstune.modeling import load_transfer_model
    from crosstune.runtime import setup

    base, params = load_section("base", params_path), load_section("evaluate", params_path)
    device = setup(base)
    model, config = load_transfer_model(model_dir)
    model.to(device)
    task, labels = config["task"], config["labels"]
    test_split = load_split(Path(encoded_dir) / "test.safetensors")
    outputs = predict_outputs(model, test_split, params.batch_size, int(config.get("max_length", 512)), device)
    predicted, confidence = outputs_to_predictions(outputs, task)
    targets = test_split.labels.tolist()
    test_frame = read_split(prepared_dir, "test")
    train_frame = read_split(prepared_dir, "train")
    if task == "classification":
        metrics: dict[str, Any] = classification_metrics(targets, predicted, labels, per_class=True)
        headline = "f1_macro"
        names = [labels[i] for i in predicted]
        table = pd.DataFrame({"text": test_frame["text"], "label": test_frame["label"], "predicted": names,
                              "confidence": confidence})
    else:
        metrics = regression_metrics(targets, predicted)
        headline = "r2"
        table = pd.DataFrame({"text": test_frame["text"], "label": test_frame["label"], "predicted": predicted})
    metrics["test_size"] = len(targets)
    best_baseline: tuple[str, float] | None = None
    for name in params.baselines:
        baseline_predictions = run_baseline(name, task, train_frame["text"], train_frame["label"],
                                            test_frame["text"], base.seed)
        if task == "classification":
            index = {label: position for position, label in enumerate(labels)}
            scores = classification_metrics(targets, [index[label] for label in baseline_predictions], labels)
        else:
            scores = regression_metrics(targets, baseline_predictions)
        for key in ("accuracy", "f1_macro", "f1_weighted", "mse", "mae", "r2"):
            if key in scores:
                metrics[f"baseline_{name}_{key}"] = scores[key]
        if best_baseline is None or scores[headline] > best_baseline[1]:
            best_baseline = (name, scores[headline])
    if best_baseline is not None:
        gain = metrics[headline] - best_baseline[1]
        metrics[f"gain_over_best_baseline_{headline}"] = gain
        metrics["beats_all_baselines"] = bool(gain > 0)
        if gain <= 0:
            logger.warning("the fine-tuned model's test %s %.4f does not beat baseline %r (%.4f): transfer did not "
                           "pay off here; try another freeze.depth, finetune.lr or backbone.",
                           headline, metrics[headline], best_baseline[0], best_baseline[1])
    write_json(metrics_path, metrics)
    write_csv(predictions_path, table)
    logger.info("test %s", {key: round(value, 4) for key, value in metrics.items()
                            if isinstance(value, float) and not key.startswith(tuple(labels))})
    return metrics

