"""finetune and evaluate through the library on the tiny backbone: every optimizer and schedule,
determinism, outputs, predict CLI and the regression path."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_params, write_table

from crosstune.config import load_section
from crosstune.data.batching import TextBatching
from crosstune.data.text_encoding import load_split
from crosstune.freezing.policy import apply_freeze
from crosstune.model.transfer_model import load_transfer_model
from crosstune.pipeline.evaluate import evaluate_stage
from crosstune.pipeline.finetune import finetune_stage
from crosstune.training.loop import train, validation_metrics
from crosstune.training.losses import build_loss, class_weight_tensor
from crosstune.training.optimization import OPTIMIZERS, SCHEDULERS


def _splits(paths: dict[str, Path]):
    return (load_split(paths["encoded"] / "train.safetensors"),
            load_split(paths["encoded"] / "validation.safetensors"))


@pytest.mark.parametrize("optimizer", OPTIMIZERS.names())
@pytest.mark.parametrize("scheduler", SCHEDULERS.names())
def test_every_optimizer_and_schedule_trains(attached: dict[str, Path], optimizer: str, scheduler: str) -> None:
    params = dataclasses.replace(load_section("finetune", attached["params"]), optimizer=optimizer,
                                 scheduler=scheduler, epochs=1, lr=1e-3)
    model, _ = load_transfer_model(attached["initial"])
    apply_freeze(model, 0)
    train_split, validation_split = _splits(attached)
    result = train(model, train_split, validation_split, params, seed=0, device="cpu")
    assert result.steps == math.ceil(len(train_split) / params.batch_size)
    assert all(math.isfinite(value) for value in result.best_metrics.values())


def test_training_lowers_validation_loss(attached: dict[str, Path]) -> None:
    params = dataclasses.replace(load_section("finetune", attached["params"]), epochs=4, select_metric="loss")
    model, _ = load_transfer_model(attached["initial"])
    apply_freeze(model, 0)
    train_split, validation_split = _splits(attached)
    loss_fn = build_loss("cross_entropy", "classification", None)
    before = validation_metrics(model, validation_split, loss_fn, "classification", ["a", "b", "c"],
                                TextBatching(8, 32), "cpu")
    result = train(model, train_split, validation_split, params, seed=0, device="cpu")
    assert result.best_metrics["loss"] < before["loss"]


def test_balanced_class_weights_follow_sklearn_rule() -> None:
    weights = class_weight_tensor("balanced", torch.tensor([0, 0, 0, 1]), 2)
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(ValueError, match="has 1 weights but there are 2 labels"):
        class_weight_tensor([1.0], torch.tensor([0, 1]), 2)


def _finetune_and_evaluate(paths: dict[str, Path], root: Path) -> dict:
    finetune_stage(str(paths["initial"]), str(paths["encoded"]), str(root / "finetuned"), str(root / "live"),
                   str(paths["params"]))
    return evaluate_stage(str(root / "finetuned"), str(paths["encoded"]), str(paths["prepared"]),
                          str(root / "eval.json"), str(root / "predictions.csv"), str(root / "misclassified.png"),
                          str(paths["params"]))


def test_finetune_and_evaluate_outputs_are_complete_and_deterministic(attached: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    first = _finetune_and_evaluate(attached, tmp_path / "run1")
    second = _finetune_and_evaluate(attached, tmp_path / "run2")
    assert first == second
    assert (tmp_path / "run1" / "finetuned" / "model.safetensors").read_bytes() == \
        (tmp_path / "run2" / "finetuned" / "model.safetensors").read_bytes()

    model_dir = tmp_path / "run1" / "finetuned"
    assert {"config.json", "model.safetensors", "params.json", "tokenizer.json"} <= {p.name for p in model_dir.iterdir()}
    resolved = json.loads((model_dir / "params.json").read_text())
    assert resolved["finetune"]["lr"] == pytest.approx(0.003) and resolved["base"]["seed"] == 7

    metrics = json.loads((tmp_path / "run1" / "eval.json").read_text())
    assert all(not isinstance(value, (dict, list)) for value in metrics.values()), "eval.json must be flat"
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "neutral_f1",
                "baseline_majority_f1_macro", "baseline_tfidf_logreg_f1_macro", "gain_over_best_baseline_f1_macro"):
        assert key in metrics, key
    predictions = pd.read_csv(tmp_path / "run1" / "predictions.csv")
    assert list(predictions.columns) == ["text", "label", "predicted", "confidence"]
    assert set(predictions["predicted"]) <= {"negative", "neutral", "positive"}
    live = tmp_path / "run1" / "live"
    assert (live / "metrics.json").is_file()
    assert (live / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert (live / "plots" / "metrics" / "validation" / "f1_macro.tsv").is_file()

    output = tmp_path / "labelled.csv"
    result = subprocess.run(
        [sys.executable, "-m", "crosstune", "predict", "--model", str(model_dir), "--input",
         str(attached["prepared"] / "test.csv"), "--output", str(output)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    labelled = pd.read_csv(output)
    assert labelled["predicted_label"].tolist() == predictions["predicted"].tolist()
    assert ((labelled["predicted_score"] > 0) & (labelled["predicted_score"] <= 1)).all()


def test_predict_cli_errors_clearly(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "crosstune", "predict", "--model", str(tmp_path / "nope"),
                             "--input", "x.csv", "--output", "y.csv"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "no config.json" in result.stderr


def test_regression_task_end_to_end(tmp_path: Path) -> None:
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    rows = [(f"review number {i} score {'high ' * (i % 5)}", str(float(i % 5))) for i in range(60)]
    train_path = write_table(tmp_path / "train.csv", rows)
    params = write_params(tmp_path / "params.yaml", {
        "prepare": {"task": "regression"},
        "finetune": {"loss": "mse", "select_metric": "r2", "class_weights": "none", "epochs": 2},
        "evaluate": {"baselines": ["mean", "tfidf_ridge"]},
    })
    prepare_stage(str(train_path), None, str(tmp_path / "prepared"), str(params))
    backbone_stage(str(tmp_path / "prepared"), str(tmp_path / "backbone"), str(tmp_path / "encoded"),
                   str(tmp_path / "backbone.json"), str(tmp_path / "selection.json"), str(tmp_path / "selection.csv"),
                   str(params))
    attach_head_stage(str(tmp_path / "backbone"), str(tmp_path / "prepared"), str(tmp_path / "initial"),
                      str(tmp_path / "freeze.json"), str(params))
    paths = {"initial": tmp_path / "initial", "encoded": tmp_path / "encoded", "prepared": tmp_path / "prepared",
             "params": params}
    metrics = _finetune_and_evaluate(paths, tmp_path / "run")
    assert {"mse", "mae", "r2", "baseline_mean_r2", "baseline_tfidf_ridge_mse"} <= set(metrics)
    assert math.isfinite(metrics["mse"])


def test_regression_rejects_classification_settings(attached: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"finetune\.loss: 'mse' does not suit a classification task"):
        build_loss("mse", "classification", None)
