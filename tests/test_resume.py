"""The finetune stage as a process: kill -9 mid-epoch then resume gives the uninterrupted result;
stale checkpoints are never resumed; 2 gloo processes train a model as good as one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, write_params
from safetensors.torch import load_file

from crosstune.training.checkpoints import Checkpointer, TrainState
from crosstune.training.loop import FAULT_KILL_AT_STEP


def _finetune(paths: dict[str, Path], out: Path, params: Path, env: dict[str, str] | None = None,
              checkpoints: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "stages" / "finetune.py"), "--initial", str(paths["initial"]),
               "--encoded", str(paths["encoded"]), "--model", str(out / "model"), "--live", str(out / "live"),
               "--params", str(params)]
    if checkpoints:
        command += ["--checkpoints", str(out / "checkpoints")]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_kill_mid_epoch_then_resume_matches_an_uninterrupted_run(attached: dict[str, Path], tmp_path: Path) -> None:
    params = write_params(tmp_path / "resume.yaml", {"finetune": {"epochs": 3}})
    reference = _finetune(attached, tmp_path / "reference", params)
    assert reference.returncode == 0, reference.stderr
    assert len(json.loads((tmp_path / "reference" / "model" / "train_history.json").read_text())) == 3

    run = tmp_path / "interrupted"
    killed = _finetune(attached, run, params, {FAULT_KILL_AT_STEP: "13"})  # 9 steps an epoch: mid epoch 2
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
    killed = _finetune(attached, tmp_path / "run", params, {FAULT_KILL_AT_STEP: "11"})
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
    from crosstune.data.text_encoding import load_split
    from crosstune.inference.outputs import predict_outputs
    from crosstune.model.transfer_model import load_transfer_model

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


def test_a_replacement_killed_between_its_renames_is_undone(tmp_path: Path) -> None:
    from crosstune.io import restore_interrupted_directory

    target = tmp_path / "finetune"
    retired = tmp_path / ".finetune.old"  # where atomic_directory parks the previous directory
    retired.mkdir()
    (retired / "state.json").write_text("{}")
    restore_interrupted_directory(target)
    assert (target / "state.json").is_file() and not retired.exists()
    restore_interrupted_directory(target)  # nothing to undo: a no-op
    assert (target / "state.json").is_file()
