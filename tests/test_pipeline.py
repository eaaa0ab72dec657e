"""crosstune.pipeline: the stage functions chained on tiny data: determinism, regression, every adaptation method, semi-supervised adaptation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import adaptation_run, write_params, write_table

from crosstune.pipeline.evaluate import evaluate_stage
from crosstune.pipeline.finetune import finetune_stage


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


@pytest.mark.parametrize("method", ["none", "dann", "cdan", "coral", "mmd"])
def test_every_adaptation_method_trains_through_the_pipeline(tmp_path: Path, raw_data, method: str) -> None:
    run = adaptation_run(tmp_path, raw_data, {"adaptation": method, "epochs": 2})
    reason = run["cache"]["reason"]
    assert run["cache"]["cached"] is False
    assert (f"finetune.adaptation: {method}" in reason) if method != "none" else ("source domain" in reason)
    metrics = run["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 0.0 <= metrics["proxy_a_distance_before"] <= 2.0 and "proxy_a_distance_after" in metrics
    encoded = json.loads((Path(run["paths"]["encoded"]) / "meta.json").read_text())
    assert encoded["source"] is True


def test_adaptation_without_a_source_domain_is_a_config_error(attached) -> None:
    from crosstune.errors import ConfigError
    from crosstune.pipeline.finetune import finetune_stage

    params = write_params(attached["params"], {"finetune": {"adaptation": "dann"}})
    with pytest.raises(ConfigError, match="needs a labelled source domain"):
        finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(attached["initial"].parent / "out"),
                       str(attached["initial"].parent / "live"), str(params))


def test_semi_supervised_adaptation_runs_with_a_few_target_labels(tmp_path: Path, raw_data) -> None:
    run = adaptation_run(tmp_path, raw_data, {"adaptation": "coral", "epochs": 1}, {"target_labelled": 0.1})
    summary = json.loads((Path(run["paths"]["prepared"]) / "summary.json").read_text())
    assert summary["train_labelled"] == 7 and "proxy_a_distance_after" in run["metrics"]
