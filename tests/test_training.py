"""crosstune.training: optimisers and schedules, rates, losses, the kept epoch (smoothed selection), early stopping, clipping, resuming, data-parallel runs and source/target streams."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    KILL_AT_STEP,
    REPO_ROOT,
    attached_model,
    fit,
    load_splits,
    write_params,
)
from safetensors.torch import load_file

from crosstune.config import FinetuneParams, load_section
from crosstune.data.batching import TextBatching
from crosstune.data.text_encoding import load_split
from crosstune.freezing.policy import apply_freeze
from crosstune.tasks.registry import TASKS
from crosstune.training import loop
from crosstune.training.callbacks import TrainingCallback
from crosstune.training.checkpoints import Checkpointer, TrainState
from crosstune.training.epoch_selection import settled_through, smoothed
from crosstune.training.loop import validation_metrics
from crosstune.training.losses import class_weight_tensor
from crosstune.training.optimization import (
    OPTIMIZERS,
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    stlr_factor,
)
from crosstune.transfer_model.storage import load_transfer_model


@pytest.mark.parametrize("optimizer", OPTIMIZERS.names())
@pytest.mark.parametrize("scheduler", SCHEDULERS.names())
def test_every_optimizer_and_schedule_trains(attached: dict[str, Path], optimizer: str, scheduler: str) -> None:
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), optimizer=optimizer,
                                 scheduler=scheduler, epochs=1, lr=1e-3)
    model, _ = load_transfer_model(attached["initial"])
    apply_freeze(model, 0)
    train_split, validation_split = load_splits(attached)
    result = fit(model, train_split, validation_split, params)
    assert result.steps == math.ceil(len(train_split) / params.batch_size)
    assert all(math.isfinite(value) for value in result.best_metrics.values())


def test_training_lowers_validation_loss(attached: dict[str, Path]) -> None:
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=4, select_metric="loss")
    model, _ = load_transfer_model(attached["initial"])
    apply_freeze(model, 0)
    train_split, validation_split = load_splits(attached)
    classification = TASKS.get("classification")
    loss_fn = classification.build_loss("cross_entropy", None, 0.0)
    before = validation_metrics(model, validation_split, loss_fn, classification, ["a", "b", "c"],
                                TextBatching(8, 32), "cpu")
    result = fit(model, train_split, validation_split, params)
    assert result.best_metrics["loss"] < before["loss"]


def test_balanced_class_weights_follow_sklearn_rule() -> None:
    weights = class_weight_tensor("balanced", torch.tensor([0, 0, 0, 1]), 2)
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(ValueError, match="has 1 weights but there are 2 labels"):
        class_weight_tensor([1.0], torch.tensor([0, 1]), 2)


def test_a_task_rejects_a_loss_that_does_not_suit_it() -> None:
    with pytest.raises(ValueError, match=r"finetune\.loss: 'mse' does not suit a classification task"):
        TASKS.get("classification").build_loss("mse", None, 0.0)
    with pytest.raises(ValueError, match=r"finetune\.loss: unknown loss 'hinge'; valid loss names: "
                                         r"\['cross_entropy', 'detection', 'mse', 'token_cross_entropy'\]"):
        TASKS.get("classification").build_loss("hinge", None, 0.0)


def test_domain_streams_pair_every_source_batch_with_a_target_batch() -> None:
    from crosstune.data.batching import TextBatching
    from crosstune.data.text_encoding import EncodedSplit
    from crosstune.training.domain_streams import build_streams

    def split(size: int, label: int) -> EncodedSplit:
        return EncodedSplit(torch.ones((size, 4), dtype=torch.int32), torch.full((size,), 4),
                            torch.full((size,), label))

    streams = build_streams(split(10, 0), split(25, -1), TextBatching(4, 8), 4, adapting=True)
    pairs = list(streams.epoch(torch.Generator().manual_seed(0)))
    assert len(pairs) == streams.batches_per_epoch == 7  # the longer (target) stream sets the epoch
    assert all(target is not None for _, target in pairs)
    assert sum(len(source.indices) for source, _ in pairs) == 24  # 4+4+2, restarted: 4+4+2, 4
    alone = build_streams(split(10, 0), split(25, -1), TextBatching(4, 8), 4, adapting=False)
    assert alone.target is None  # source-only: no labelled target row, no adaptation loss
    assert alone.batches_per_epoch == 7  # the same number of steps as the adaptation run
    few_labels = split(25, -1)
    few_labels.labels[:3] = 2
    semi = build_streams(split(10, 0), few_labels, TextBatching(4, 8), 4, adapting=False)
    assert semi.target is few_labels  # semi-supervised: the kept target labels train too


def _finetune(paths: dict[str, Path], out: Path, params: Path, kill_at_step: int = 0,
              checkpoints: bool = True) -> subprocess.CompletedProcess:
    """The finetune stage script in a process of its own; with ``kill_at_step`` SIGKILLed after that step."""
    killer = [str(KILL_AT_STEP), str(kill_at_step)] if kill_at_step else []
    command = [sys.executable, *killer, str(REPO_ROOT / "stages" / "finetune.py"), "--initial", str(paths["initial"]),
               "--encoded", str(paths["encoded"]), "--model", str(out / "model"), "--live", str(out / "live"),
               "--params", str(params)]
    if checkpoints:
        command += ["--checkpoints", str(out / "checkpoints")]
    return subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=600)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_kill_mid_epoch_then_resume_matches_an_uninterrupted_run(attached: dict[str, Path], tmp_path: Path) -> None:
    params = write_params(tmp_path / "resume.yaml", {"finetune": {"epochs": 3}})
    reference = _finetune(attached, tmp_path / "reference", params)
    assert reference.returncode == 0, reference.stderr
    assert len(json.loads((tmp_path / "reference" / "model" / "train_history.json").read_text())) == 3

    run = tmp_path / "interrupted"
    killed = _finetune(attached, run, params, kill_at_step=13)  # 9 steps an epoch: mid epoch 2
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    assert not (run / "model").exists()

    resumed = _finetune(attached, run, params)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "after epoch 1" in resumed.stderr
    expected, actual = _weights(tmp_path / "reference" / "model"), _weights(run / "model")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert json.loads((run / "live" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "reference" / "live" / "metrics.json").read_text())
    assert (run / "model" / "train_history.json").read_text() == \
        (tmp_path / "reference" / "model" / "train_history.json").read_text()


def test_finished_or_changed_runs_start_from_scratch(attached: dict[str, Path], tmp_path: Path) -> None:
    params = write_params(tmp_path / "p.yaml", {"finetune": {"epochs": 2}})
    first = _finetune(attached, tmp_path / "run", params)
    assert first.returncode == 0, first.stderr
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []  # a finished run leaves nothing to resume
    again = _finetune(attached, tmp_path / "run", params)
    assert again.returncode == 0 and "resuming" not in again.stderr

    # an unfinished checkpoint of other params is not resumed either
    killed = _finetune(attached, tmp_path / "run", params, kill_at_step=11)
    assert killed.returncode == -signal.SIGKILL
    changed = write_params(tmp_path / "p.yaml", {"finetune": {"epochs": 2, "lr": 0.001}})
    after_change = _finetune(attached, tmp_path / "run", changed)
    assert after_change.returncode == 0, after_change.stderr
    assert "other params or data: starting from scratch" in after_change.stderr
    assert "resuming" not in after_change.stderr


def test_checkpointer_ignores_other_fingerprints(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(0)
    Checkpointer(tmp_path / "ckpt", "aaa").save(TrainState(epoch=1, step=3), model, model.state_dict(), optimizer,
                                                scheduler, None, generator)
    assert Checkpointer(tmp_path / "ckpt", "aaa").resumable().epoch == 1
    assert Checkpointer(tmp_path / "ckpt", "bbb").resumable() is None
    assert list((tmp_path / "ckpt").iterdir()) == []


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(attached: dict[str, Path], tmp_path: Path) -> None:
    from crosstune.data.batching import TextBatching
    from crosstune.inference.outputs import predict_outputs
    from crosstune.transfer_model.storage import load_transfer_model

    single = write_params(tmp_path / "one.yaml", {"finetune": {"epochs": 3}})
    double = write_params(tmp_path / "two.yaml", {"finetune": {"epochs": 3, "num_processes": 2}})
    one = _finetune(attached, tmp_path / "one", single, checkpoints=False)
    assert one.returncode == 0, one.stderr
    two = _finetune(attached, tmp_path / "two", double)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data-parallel process 1 of 2 on cpu" in two.stderr
    test = load_split(attached["encoded"] / "test.safetensors")
    accuracies = []
    for run in ("one", "two"):
        model, _ = load_transfer_model(tmp_path / run / "model")
        predicted = predict_outputs(model, test, TextBatching(16, 32), "cpu").argmax(-1)
        accuracies.append(float((predicted == test.labels).float().mean()))
    assert accuracies[1] > 0.6  # well above the 1/3 of guessing
    assert abs(accuracies[0] - accuracies[1]) <= 0.1


@pytest.mark.slow
def test_the_readmes_two_node_torchrun_recipe_matches_one_process(attached: dict[str, Path], tmp_path: Path) -> None:
    """The README's several-machine recipe run for real: two torchrun "nodes" (one process each) meeting on a
    loopback c10d rendezvous, gloo, the finetune stage script with its usual arguments; rank 0 writes the model,
    which predicts the test split as the single-process run's does within the contract's tolerance."""
    import socket

    from crosstune.data.batching import TextBatching
    from crosstune.inference.outputs import predict_outputs
    from crosstune.transfer_model.storage import load_transfer_model

    params = write_params(tmp_path / "params.yaml", {"finetune": {"epochs": 3}})
    one = _finetune(attached, tmp_path / "one", params, checkpoints=False)
    assert one.returncode == 0, one.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stage = [str(REPO_ROOT / "stages" / "finetune.py"), "--initial", str(attached["initial"]), "--encoded",
             str(attached["encoded"]), "--model", str(tmp_path / "nodes" / "model"), "--live",
             str(tmp_path / "nodes" / "live"), "--params", str(params)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "readme-recipe"]
    nodes = [subprocess.Popen([*torchrun, *stage], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(output[-3000:] for output in outputs)
    assert any("data-parallel process 1 of 2 on cpu" in output for output in outputs)
    test = load_split(attached["encoded"] / "test.safetensors")
    accuracies = []
    for run in (tmp_path / "one" / "model", tmp_path / "nodes" / "model"):
        model, _ = load_transfer_model(run)
        predicted = predict_outputs(model, test, TextBatching(16, 32), "cpu").argmax(-1)
        accuracies.append(float((predicted == test.labels).float().mean()))
    assert accuracies[1] > 0.6  # well above the 1/3 of guessing
    assert abs(accuracies[0] - accuracies[1]) <= 0.1  # the contract: within seed noise, not bit for bit


def test_layer_wise_decay_and_head_rate_give_each_group_its_rate(attached: dict[str, Path]) -> None:
    model = attached_model(attached)
    params = FinetuneParams(lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    groups = parameter_groups(model, params)
    rate = {id(parameter): group["lr"] for group in groups for parameter in group["params"]}
    for name, parameter in model.named_parameters():
        if name.startswith("head."):
            expected = 1e-2
        elif name.startswith("backbone.encoder.layer.1."):
            expected = 1e-3
        elif name.startswith("backbone.encoder.layer.0."):
            expected = 5e-4
        else:
            assert name.startswith("backbone.embeddings."), name
            expected = 2.5e-4
        assert rate[id(parameter)] == pytest.approx(expected), name
    optimizer = build_optimizer(model, params)
    build_scheduler(optimizer, dataclasses.replace(params, scheduler="constant", warmup_ratio=0.0), 10)
    assert sorted({group["lr"] for group in optimizer.param_groups}) == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-2])


def test_l2sp_switches_weight_decay_off_for_the_backbone_only(attached: dict[str, Path]) -> None:
    model = attached_model(attached)
    groups = parameter_groups(model, FinetuneParams(weight_decay=0.1, l2sp=0.01))
    head_ids = {id(p) for p in model.head.parameters()}
    decayed = [group for group in groups if group["weight_decay"] > 0]
    backbone = [group for group in groups if not all(id(p) in head_ids for p in group["params"])]
    assert decayed and all(id(p) in head_ids for group in decayed for p in group["params"])
    assert backbone and all(group["weight_decay"] == 0 for group in backbone)


def test_slanted_triangular_rises_then_decays() -> None:
    total, cut, ratio = 100, 10, 32.0
    factors = [stlr_factor(step, cut, total, ratio) for step in range(total + 1)]
    assert factors[0] == pytest.approx(1 / ratio)
    assert factors[cut] == pytest.approx(1.0)
    assert factors[total] == pytest.approx(1 / ratio)
    assert all(a < b for a, b in zip(factors[:cut], factors[1 : cut + 1]))
    assert all(a > b for a, b in zip(factors[cut:total], factors[cut + 1 :]))


def test_training_with_every_regularizer_and_schedule_stays_finite(attached: dict[str, Path]) -> None:
    model = attached_model(attached)
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=2, l2sp=0.01, bss=0.001,
                                 label_smoothing=0.1, layer_decay=0.8, head_lr=1e-2, scheduler="slanted_triangular",
                                 unfreeze="gradual", unfreeze_every=2, max_grad_norm=1.0, grad_accumulation=2)
    train_split, validation_split = load_splits(attached)
    result = fit(model, train_split, validation_split, params)
    assert result.steps == 2 * math.ceil(math.ceil(len(train_split) / params.batch_size) / 2)
    assert all(math.isfinite(value) for value in result.best_metrics.values())


def test_label_smoothing_penalises_confident_correct_predictions() -> None:
    logits, targets = torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([0])
    classification = TASKS.get("classification")
    plain = classification.build_loss("cross_entropy", None, 0.0)(logits, targets)
    smoothed = classification.build_loss("cross_entropy", None, 0.2)(logits, targets)
    assert float(smoothed) > float(plain) + 0.5
    with pytest.raises(ValueError, match="label_smoothing"):
        TASKS.get("regression").build_loss("mse", None, 0.1)


def test_early_stopping_stops_after_patience_epochs(attached: dict[str, Path]) -> None:
    model = attached_model(attached)
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=6, lr=1e-12, head_lr=1e-12,
                                 early_stopping_patience=2, select_metric="loss")
    train_split, validation_split = load_splits(attached)
    result = fit(model, train_split, validation_split, params)
    assert result.stopped_early
    assert len(result.history) < 6


SEED_42_TEXT_CURVE = [0.371, 0.473, 0.471, 0.453]  # the text default's validation macro-F1 per epoch (seed 42)


def test_smoothed_value_is_the_centred_mean_truncated_at_the_ends() -> None:
    values = SEED_42_TEXT_CURVE
    assert smoothed(values, 1, 1) == pytest.approx((0.371 + 0.473) / 2)
    assert smoothed(values, 3, 1) == pytest.approx((0.473 + 0.471 + 0.453) / 3)
    assert smoothed(values, 4, 1) == pytest.approx((0.471 + 0.453) / 2)
    assert smoothed(values, 2, 0) == 0.473
    assert smoothed(values[:3], 3, 1) == pytest.approx((0.473 + 0.471) / 2)  # epoch 4 not validated yet
    assert settled_through(3, 1, ended=False) == 2 and settled_through(3, 1, ended=True) == 3
    assert settled_through(1, 2, ended=False) == 0 and settled_through(2, 0, ended=False) == 2


def _scripted_run(monkeypatch: pytest.MonkeyPatch, attached: dict[str, Path], curve: list[float],
                  **overrides: object) -> tuple[loop.TrainResult, list[dict[str, torch.Tensor]], torch.nn.Module]:
    """Train the tiny model with validation macro-F1 following ``curve`` epoch by epoch; returns the result,
    every epoch's weights and the model (holding the kept weights)."""
    scripted = iter(curve)
    real = loop.validation_metrics

    def validation(*args: object, **kwargs: object) -> dict[str, float]:
        return {**real(*args, **kwargs), "f1_macro": next(scripted)}

    monkeypatch.setattr(loop, "validation_metrics", validation)
    model = attached_model(attached)
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=len(curve), lr=1e-3,
                                 select_metric="f1_macro", **overrides)
    weights: list[dict[str, torch.Tensor]] = []
    train_split, validation_split = load_splits(attached)

    class KeepWeights(TrainingCallback):
        def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
            weights.append({key: value.clone() for key, value in model.state_dict().items()})

    result = fit(model, train_split, validation_split, params, callbacks=[KeepWeights()])
    return result, weights, model


@pytest.mark.parametrize(("window", "kept"), [(1, 2), (3, 3)])
def test_the_kept_epoch_is_the_best_smoothed_one_with_its_own_weights(
        monkeypatch: pytest.MonkeyPatch, attached: dict[str, Path], window: int, kept: int) -> None:
    # Alone, epoch 2 validates best; with its neighbours, epoch 3 (0.466 against 0.438).
    result, weights, model = _scripted_run(monkeypatch, attached, SEED_42_TEXT_CURVE, select_window=window)
    assert result.best_epoch == kept
    assert result.best_metrics["f1_macro"] == SEED_42_TEXT_CURVE[kept - 1]
    assert any(not torch.equal(weights[kept - 1][name], weights[-1][name]) for name in weights[0])  # not the last
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[kept - 1][name]), name


def test_the_last_epoch_settles_on_a_truncated_window_when_the_run_ends(
        monkeypatch: pytest.MonkeyPatch, attached: dict[str, Path]) -> None:
    result, weights, model = _scripted_run(monkeypatch, attached, [0.2, 0.3, 0.9], select_window=3)
    assert result.best_epoch == 3  # s(3) = mean(0.3, 0.9) = 0.6 beats s(2) = 0.467
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[2][name]), name


def test_early_stopping_counts_settled_epochs_and_settles_the_rest(
        monkeypatch: pytest.MonkeyPatch, attached: dict[str, Path]) -> None:
    result, weights, model = _scripted_run(monkeypatch, attached, [0.5, 0.6, 0.4, 0.3, 0.2, 0.1],
                                           select_window=3, early_stopping_patience=1)
    # s(1) = 0.55, s(2) = 0.5 (settled after epoch 3): one settled epoch without a better value, stop;
    # epoch 3 then settles on what there is, s(3) = mean(0.6, 0.4) = 0.5.
    assert result.stopped_early and len(result.history) == 3
    assert result.best_epoch == 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[0][name]), name


def test_checkpoint_keeps_the_pending_epochs_weights(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(0)
    pending = {2: {key: value + 2 for key, value in model.state_dict().items()},
               3: {key: value + 3 for key, value in model.state_dict().items()}}
    saver = Checkpointer(tmp_path / "ckpt", "aaa")
    saver.save(TrainState(epoch=3, step=9, selected_through=1), model, model.state_dict(), optimizer, scheduler,
               None, generator, pending=pending)
    state = saver.resumable()
    assert state.selected_through == 1
    _, restored = saver.restore(model, optimizer, scheduler, None, generator)
    assert restored.keys() == pending.keys()
    for epoch, weights in pending.items():
        for key, value in weights.items():
            assert torch.equal(restored[epoch][key], value)


def test_gradient_clipping_bounds_each_update(attached: dict[str, Path]) -> None:
    model = attached_model(attached)
    head = model.head
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    before = torch.cat([p.detach().flatten().clone() for p in head.parameters()])
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=1, optimizer="sgd", momentum=0.0,
                                 lr=1.0, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0, max_grad_norm=1e-3,
                                 select_metric="loss")
    train_split, validation_split = load_splits(attached)
    result = fit(model, train_split, validation_split, params)
    moved = torch.cat([p.detach().flatten() for p in head.parameters()]) - before
    assert 0 < float(moved.norm()) <= 1e-3 * result.steps + 1e-7


def test_finetune_params_reject_bad_values() -> None:
    from crosstune.errors import ConfigError

    with pytest.raises(ConfigError, match="finetune.unfreeze"):
        FinetuneParams(unfreeze="sometimes")
    with pytest.raises(ConfigError, match="finetune.layer_decay"):
        FinetuneParams(layer_decay=0.0)
    with pytest.raises(ConfigError, match="finetune.select_window: 2 is even"):
        FinetuneParams(select_window=2)
    with pytest.raises(ConfigError, match="finetune.select_window"):
        FinetuneParams(select_window=0)
    with pytest.raises(ConfigError, match="num_processes"):
        FinetuneParams(num_processes=2, unfreeze="gradual")


def test_zero_processes_means_one_per_gpu() -> None:
    from crosstune.training.distributed import resolve_num_processes

    assert resolve_num_processes(3) == 3
    assert resolve_num_processes(0) == max(torch.cuda.device_count(), 1)
