"""crosstune.training.closed_form_head and the probe stage: the closed-form head fit, LP-FT's start, and the
probe model the guard compares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_params

from crosstune.tasks.registry import TASKS
from crosstune.training.closed_form_head import (
    PROBE_STRENGTHS,
    fit_output_layer,
    output_layer,
)


def _blobs(n: int, classes: int, dim: int = 6, seed: int = 0, offset: float = 5.0, scale: float = 10.0):
    """Gaussian clusters, one per class, on inputs with a large mean and scale (so the folded
    standardisation matters)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = np.random.default_rng(100 + classes).normal(size=(classes, dim)) * 3  # the same in every split
    inputs = (centres[labels] + rng.normal(size=(n, dim))) * scale + offset
    return inputs.astype(np.float32), labels.astype(np.int64)


@pytest.mark.parametrize("classes", [2, 3])
def test_fit_matches_scikit_learn_on_raw_inputs(classes: int) -> None:
    """The layer takes raw inputs: its predictions equal scikit-learn's fitted on standardised ones, and the
    binary case's two logits give scikit-learn's probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = _blobs(120, classes, seed=1)
    valid_x, valid_y = _blobs(60, classes, seed=2)
    labels = [f"c{i}" for i in range(classes)]
    fit = fit_output_layer(train_x, train_y, valid_x, valid_y, TASKS.get("classification"), labels, "f1_macro", None,
                           torch.nn.CrossEntropyLoss(), seed=0)
    assert fit.strength in PROBE_STRENGTHS and len(fit.tried) == len(PROBE_STRENGTHS)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=fit.strength, max_iter=5000, random_state=0))
    reference.fit(train_x, train_y)
    logits = torch.from_numpy(valid_x @ fit.weight.T + fit.bias)
    assert logits.softmax(1).numpy() == pytest.approx(reference.predict_proba(valid_x), abs=1e-4)
    assert fit.validation["accuracy"] > 0.9


def test_strength_is_chosen_on_validation_and_class_weights_count() -> None:
    """Each strength is scored on validation; the chosen one is the best there (ties: the stronger), and
    balanced class weights move the fit towards a rare class."""
    train_x, train_y = _blobs(90, 3, seed=3, offset=0.0, scale=1.0)
    train_x = train_x + np.random.default_rng(4).normal(size=train_x.shape).astype(np.float32) * 12  # heavy overlap
    valid_x, valid_y = _blobs(90, 3, seed=5, offset=0.0, scale=1.0)
    valid_x = valid_x + np.random.default_rng(6).normal(size=valid_x.shape).astype(np.float32) * 12
    labels = ["a", "b", "c"]
    fit = fit_output_layer(train_x, train_y, valid_x, valid_y, TASKS.get("classification"), labels, "f1_macro", None,
                           torch.nn.CrossEntropyLoss(), seed=0)
    best = max(row["f1_macro"] for row in fit.tried)
    assert fit.validation["f1_macro"] == best
    assert fit.strength == next(row["strength"] for row in fit.tried if row["f1_macro"] == best)
    keep = (train_y != 2) | (np.arange(len(train_y)) % 6 == 2)  # class c: 5 of 30 rows
    weights = torch.tensor([1.0, 1.0, 8.0])
    plain = fit_output_layer(train_x[keep], train_y[keep], valid_x, valid_y, TASKS.get("classification"), labels,
                             "loss", None, torch.nn.CrossEntropyLoss(), seed=0)
    weighted = fit_output_layer(train_x[keep], train_y[keep], valid_x, valid_y, TASKS.get("classification"), labels,
                                "loss", weights, torch.nn.CrossEntropyLoss(weight=weights), seed=0)
    predicted_c = [(valid_x @ f.weight.T + f.bias).argmax(1).tolist().count(2) for f in (plain, weighted)]
    assert predicted_c[1] > predicted_c[0]


def test_regression_probe_is_ridge() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(200, 4)).astype(np.float32) * 3 + 7
    targets = (inputs @ np.array([1.0, -2.0, 0.5, 0.0]) + 3 + rng.normal(size=200) * 0.1).astype(np.float32)
    loss = torch.nn.MSELoss()
    fit = fit_output_layer(inputs[:150], targets[:150], inputs[150:], targets[150:], TASKS.get("regression"), ["value"],
                           "r2", None, lambda outputs, y: loss(outputs.squeeze(-1), y.float()), seed=0)
    assert fit.weight.shape == (1, 4) and fit.validation["r2"] > 0.99


def test_output_layer_is_the_heads_last_linear() -> None:
    from crosstune.heads.modules import LinearHead, MLPHead

    linear = LinearHead(8, 3)
    assert output_layer(linear) is linear.classifier
    mlp = MLPHead(8, 3, hidden_dim=5)
    assert output_layer(mlp).in_features == 5 and output_layer(mlp).out_features == 3
    with pytest.raises(ValueError, match="no linear layer"):
        output_layer(torch.nn.Identity())


def _probe(paths: dict, out: Path, params: Path, features: str | None = None) -> dict:
    from crosstune.pipeline.probe import probe_stage

    return probe_stage(str(paths["initial"]), str(paths["encoded"]), str(out), str(out.parent / f"{out.name}.json"),
                       str(params), features)


def test_probe_stage_saves_a_loadable_model_that_scores_as_it_validated(attached, tmp_path: Path) -> None:
    """models/probe loads like any model; its validation metric recomputed from the saved weights is the one
    the fit recorded, and only the head's output layer differs from the attached model."""
    from safetensors.torch import load_file

    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.inference.outputs import predict_outputs, score_outputs
    from crosstune.transfer_model.storage import load_transfer_model

    summary = _probe(attached, tmp_path / "probe", attached["params"])
    model, config = load_transfer_model(tmp_path / "probe")
    validation = load_any_split(attached["encoded"] / "validation.safetensors")
    outputs = predict_outputs(model, validation, batching_for(config, 16, 32), "cpu")
    scores = score_outputs(outputs, validation, config["task"], config["labels"], per_class=False)
    assert scores["f1_macro"] == pytest.approx(summary["probe_validation_f1_macro"], abs=1e-6)
    assert summary["probe_validation_f1_macro"] > 0.5
    probe, initial = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "probe", attached["initial"]))
    changed = sorted(key for key in probe if not probe[key].equal(initial[key]))
    assert changed == ["head.classifier.bias", "head.classifier.weight"]
    record = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert record["strength"] == summary["probe_strength"] and len(record["tried"]) == len(PROBE_STRENGTHS)


def test_probe_from_the_prefix_cache_equals_the_whole_backbone(attached, tmp_path: Path) -> None:
    """With a frozen prefix the probe reads the cache stage's features and runs only the blocks above: the
    same fit as running the whole backbone."""
    from safetensors.torch import load_file

    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.cache import cache_stage

    params = write_params(tmp_path / "depth1.yaml", {"freeze": {"depth": 1}})
    paths = {**attached, "initial": tmp_path / "initial1"}
    attach_head_stage(str(attached["backbone"]), str(attached["prepared"]), str(paths["initial"]),
                      str(tmp_path / "freeze.json"), str(params))
    meta = cache_stage(str(paths["initial"]), str(attached["encoded"]), str(tmp_path / "features"), str(params))
    assert meta["cached"] is True
    cached = _probe(paths, tmp_path / "cached", params, str(tmp_path / "features"))
    whole = _probe(paths, tmp_path / "whole", params)
    assert cached["probe_strength"] == whole["probe_strength"]
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("cached", "whole"))
    assert a["head.classifier.weight"] == pytest.approx(b["head.classifier.weight"].numpy(), abs=1e-4)


def test_probe_stage_needs_the_cache_stage_output(attached, tmp_path: Path) -> None:
    from crosstune.errors import ArtifactError

    with pytest.raises(ArtifactError, match="run the cache stage first"):
        _probe(attached, tmp_path / "probe", attached["params"], str(tmp_path / "no-features"))


def test_lp_ft_starts_fine_tuning_from_the_probes_head(attached, tmp_path: Path) -> None:
    """finetune.head_init: probe loads the probe stage's model: with a vanishing learning rate the fine-tuned
    head is still the probe's; head_init: random starts from attach_head's head instead; and probe without
    a probe model is one clear error."""
    from safetensors.torch import load_file

    from crosstune.errors import ArtifactError
    from crosstune.pipeline.finetune import finetune_stage

    _probe(attached, tmp_path / "probe", attached["params"])
    probe = load_file(str(tmp_path / "probe" / "model.safetensors"))
    heads = {}
    for init in ("probe", "random"):
        params = write_params(tmp_path / f"{init}.yaml", {"finetune": {"head_init": init, "lr": 1e-12, "epochs": 1}})
        finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(tmp_path / init),
                       str(tmp_path / f"live-{init}"), str(params), probe_dir=str(tmp_path / "probe"))
        heads[init] = load_file(str(tmp_path / init / "model.safetensors"))["head.classifier.weight"]
    assert heads["probe"] == pytest.approx(probe["head.classifier.weight"].numpy(), abs=1e-6)
    assert not torch.allclose(heads["random"], probe["head.classifier.weight"], atol=1e-3)
    params = write_params(tmp_path / "missing.yaml", {"finetune": {"head_init": "probe"}})
    with pytest.raises(ArtifactError, match="finetune.head_init: probe"):
        finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(tmp_path / "x"), str(tmp_path / "l"),
                       str(params), probe_dir=str(tmp_path / "absent"))


def test_auto_head_init_starts_from_the_probe_only_when_the_backbone_is_frozen_whole(attached, tmp_path: Path) -> None:
    """finetune.head_init: auto (the default): with every block frozen the head starts from the probe's closed-form
    fit (with a vanishing rate it stays the probe's); with anything in the backbone trainable it starts from
    attach_head's random head, exactly as head_init: random does."""
    from safetensors.torch import load_file

    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.finetune import finetune_stage

    frozen = write_params(tmp_path / "frozen.yaml", {"freeze": {"depth": "all"},
                                                      "finetune": {"lr": 1e-12, "epochs": 1}})
    paths = {**attached, "initial": tmp_path / "initial-all"}
    attach_head_stage(str(attached["backbone"]), str(attached["prepared"]), str(paths["initial"]),
                      str(tmp_path / "freeze.json"), str(frozen))
    cache_stage(str(paths["initial"]), str(attached["encoded"]), str(tmp_path / "features"), str(frozen))
    _probe(paths, tmp_path / "probe", frozen, str(tmp_path / "features"))
    finetune_stage(str(paths["initial"]), str(attached["encoded"]), str(tmp_path / "auto-all"), str(tmp_path / "l1"),
                   str(frozen), str(tmp_path / "features"), probe_dir=str(tmp_path / "probe"))
    probe = load_file(str(tmp_path / "probe" / "model.safetensors"))["head.classifier.weight"]
    tuned = load_file(str(tmp_path / "auto-all" / "model.safetensors"))["head.classifier.weight"]
    assert tuned == pytest.approx(probe.numpy(), abs=1e-6)
    heads = {}
    for init in ("auto", "random"):
        params = write_params(tmp_path / f"{init}.yaml", {"finetune": {"head_init": init, "lr": 1e-12, "epochs": 1}})
        finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(tmp_path / init),
                       str(tmp_path / f"live-{init}"), str(params), probe_dir=str(tmp_path / "probe"))
        heads[init] = load_file(str(tmp_path / init / "model.safetensors"))
    assert all(torch.equal(heads["auto"][name], heads["random"][name]) for name in heads["random"])
