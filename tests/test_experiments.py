"""The sweep's grid, names and ranking, the queue's wait loop and the example runner (the real DVC queue runs in
tests/test_pipeline_dvc.py)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from crosstune.errors import ConfigError, CrosstuneError
from crosstune.experiments import dvc_queue
from crosstune.experiments.example import experiment_name, format_metrics, run_example
from crosstune.experiments.sweep import (
    TrialResult,
    default_jobs,
    format_ranking,
    grid_trials,
    parse_grid,
    rank_trials,
    trial_name,
)


def test_grid_is_the_product_in_the_given_order() -> None:
    grid = parse_grid(["finetune.lr=1e-4, 5e-5", "freeze.depth=0,3,all"])
    assert grid == {"finetune.lr": ["1e-4", "5e-5"], "freeze.depth": ["0", "3", "all"]}
    trials = grid_trials(grid)
    assert len(trials) == 6
    assert trials[0] == ["finetune.lr=1e-4", "freeze.depth=0"] and trials[-1] == ["finetune.lr=5e-5", "freeze.depth=all"]


def test_list_and_quoted_values_keep_their_commas() -> None:
    grid = parse_grid(['evaluate.baselines=[majority,tfidf_logreg],[majority]', 'prepare.text_column="a,b",c'])
    assert grid["evaluate.baselines"] == ["[majority,tfidf_logreg]", "[majority]"]
    assert grid["prepare.text_column"] == ['"a,b"', "c"]


@pytest.mark.parametrize("specs, message", [
    (["finetune.lr"], "expected section.key=V1,V2"),
    (["lr=1e-4"], "expected section.key=V1,V2"),
    (["finetune.lr="], "expected section.key=V1,V2"),
    (["finetune.lr=1", "finetune.lr=2"], "given twice"),
    ([], "no params given"),
])
def test_bad_grids_say_how_to_write_one(specs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid(specs)


def test_trial_names_are_stable_ref_safe_and_order_free() -> None:
    name = trial_name(["finetune.lr=1e-4", "freeze.depth=3"])
    assert name == trial_name(["freeze.depth=3", "finetune.lr=1e-4"])
    assert name != trial_name(["finetune.lr=1e-4", "freeze.depth=0"])
    assert name.startswith("sweep-") and name.replace("-", "").isalnum()


def _result(name: str, validation: float | None, state: str = "success") -> TrialResult:
    return TrialResult(name, [f"finetune.lr={name}"], state, validation, {"f1_macro": 0.5} if validation else {}, None)


def test_ranking_puts_the_best_first_and_failures_last() -> None:
    results = [_result("a", 0.4), _result("b", None, "failed"), _result("c", 0.7), _result("d", 0.5)]
    assert [r.name for r in rank_trials(results, "f1_macro")] == ["c", "d", "a", "b"]
    assert [r.name for r in rank_trials(results, "loss")] == ["a", "d", "c", "b"]
    table = format_ranking(rank_trials(results, "f1_macro"), "f1_macro")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["rank", "experiment", "params"]
    assert lines[1].split()[:2] == ["1", "c"] and lines[4].split()[:2] == ["-", "b"]
    assert "dvc queue logs b" in table and "run the same sweep again" in table


def test_default_jobs_follow_cores_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert default_jobs({"base": {"device": "cpu", "num_threads": 0}}) == 1
    assert default_jobs({"base": {"device": "cpu", "num_threads": 2}}) == 4
    assert default_jobs({"base": {"device": "cpu", "num_threads": 16}}) == 1


# --- crosstune tune: the search space, the storage and the per-epoch reporting that prunes ---

def test_search_space_reads_ranges_lists_and_integer_ranges() -> None:
    import optuna

    from crosstune.experiments.tune import SearchSpace

    space = SearchSpace.from_mapping({
        "finetune": {"lr": {"low": "1e-5", "high": 3.0e-4, "log": True}, "epochs": {"low": 2, "high": 6},
                     "weight_decay": [0.0, 0.01]},
        "freeze": {"depth": [0, 2, "all"]},
    })
    lr, epochs = space.distributions["finetune.lr"], space.distributions["finetune.epochs"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log and lr.low == 1e-5
    assert isinstance(epochs, optuna.distributions.IntDistribution) and (epochs.low, epochs.high) == (2, 6)
    assert space.distributions["freeze.depth"].choices == (0, 2, "all")


@pytest.mark.parametrize("data, message", [
    ({"finetune": {"lrr": [1]}}, r"finetune\.lrr: unknown key; valid keys in 'finetune'"),
    ({"finetuning": {"lr": [1]}}, "not a params section"),
    ({"finetune": {"lr": {"low": 1e-3, "high": 1e-4}}}, "low .* must be below high"),
    ({"finetune": {"lr": {"low": 1e-5}}}, "expected a list of values or {low, high}"),
    ({"finetune": {"lr": {"low": "x", "high": 1}}}, "expected a number"),
    ({}, "expected params sections"),
])
def test_bad_search_spaces_name_the_key(data: dict, message: str) -> None:
    from crosstune.experiments.tune import SearchSpace

    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_mapping(data)


def test_relative_sqlite_storage_is_made_absolute(tmp_path) -> None:
    from crosstune.experiments.tune import absolute_storage, trial_overrides

    assert absolute_storage("sqlite:///.dvc/tmp/s.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/.dvc/tmp/s.db"
    assert absolute_storage("postgresql://host/db", tmp_path) == "postgresql://host/db"
    assert trial_overrides({"finetune.lr": 1e-4, "freeze.depth": "all"}) == ["finetune.lr=0.0001",
                                                                               'freeze.depth="all"']


def test_epoch_reports_reach_the_study_and_a_trial_below_the_median_is_pruned(tmp_path, monkeypatch) -> None:
    import optuna

    from crosstune.experiments.trial_pruning import (
        TrialPruned,
        TrialSpec,
        reporter_from_environment,
    )

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for curve in ([0.5, 0.7, 0.8], [0.6, 0.75, 0.85]):  # two completed trials: the median to beat
        trial = study.ask()
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
        study.tell(trial, curve[-1])
    assert reporter_from_environment() is None  # an ordinary `dvc repro`: nothing reported
    trial = study.ask()
    spec = TrialSpec(storage, "s", trial._trial_id, "f1_macro")
    monkeypatch.setenv(*next(iter(spec.to_environment().items())))
    report = reporter_from_environment()
    report.on_epoch(1, {"f1_macro": 0.2})  # within the warm-up epoch: never pruned
    with pytest.raises(TrialPruned, match="pruned by Optuna's median pruner after epoch 2"):
        report.on_epoch(2, {"f1_macro": 0.3})
    assert study.trials[-1].intermediate_values == {1: 0.2, 2: 0.3}


def test_a_queue_whose_worker_stopped_early_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """treeverse/dvc#10562: the worker stops with trials still queued; the wait loop starts it again instead of
    waiting for ever, and only once the trials have sat queued with none running for ``stall_polls`` polls."""
    calls: list[tuple[str, ...]] = []
    # poll by poll: one trial running, then both queued (the worker died), then, after the restart, both done
    states = iter([["running", "queued"]] + [["queued", "queued"]] * 3 + [["running", "queued"], ["success", "failed"]])
    monkeypatch.setattr(dvc_queue, "dvc", lambda *args, **kwargs: calls.append(args))
    monkeypatch.setattr(dvc_queue, "baseline_experiments", lambda repo: [
        dvc_queue.Experiment(name=name, rev=name, state=state) for name, state in zip(("a", "b"), next(states))])
    finished = dvc_queue.run_queue(["a", "b"], jobs=1, poll_seconds=0, stall_polls=3)
    assert [experiment.state for experiment in finished] == ["success", "failed"]
    assert calls == [("queue", "start", "-j", "1")] * 2


def test_a_queue_that_never_finishes_gives_up_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dvc_queue, "dvc", lambda *args, **kwargs: None)
    monkeypatch.setattr(dvc_queue, "baseline_experiments",
                        lambda repo: [dvc_queue.Experiment(name="a", rev="a", state="running")])
    with pytest.raises(CrosstuneError, match="1 trial\\(s\\) still running after 0 s; see `dvc queue status`"):
        dvc_queue.run_queue(["a"], jobs=1, poll_seconds=0, timeout_seconds=0)


def test_a_dvc_command_that_leaves_a_daemon_behind_returns_when_the_command_exits(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """`dvc queue start` leaves a daemon holding its stdout; waiting for that output to close hung a sweep."""
    import signal
    import sys
    import time

    script = ("import subprocess, sys; "
              "daemon = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print('workers started'); print(daemon.pid, file=sys.stderr)")
    monkeypatch.setattr(dvc_queue, "dvc_command", lambda *args: [sys.executable, "-c", script])
    started = time.monotonic()
    completed = dvc_queue.dvc("queue", "start", repo=tmp_path)
    elapsed = time.monotonic() - started
    os.kill(int(completed.stderr), signal.SIGTERM)
    assert elapsed < 30  # the daemon sleeps 60 s: returning before it ends is the point
    assert (completed.returncode, completed.stdout) == (0, "workers started\n")


def test_the_wait_loop_polls_again_when_dvc_exp_show_fails_mid_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial's temporary workspace deleted while `dvc exp show` reads it fails that one poll, not the sweep;
    failures that persist still stop the wait with DVC's message."""
    polls = iter([CrosstuneError("`dvc exp show --json` failed: directory '.dvc/tmp/exps/tmp8demfmxx/.dvc' does "
                                 "not exist"), [dvc_queue.Experiment(name="a", rev="a", state="failed")]])

    def listing(repo):
        poll = next(polls)
        if isinstance(poll, Exception):
            raise poll
        return poll

    monkeypatch.setattr(dvc_queue, "dvc", lambda *args, **kwargs: None)
    monkeypatch.setattr(dvc_queue, "baseline_experiments", listing)
    assert [experiment.state for experiment in dvc_queue.run_queue(["a"], jobs=1, poll_seconds=0)] == ["failed"]

    def broken(repo):
        raise CrosstuneError("`dvc exp show --json` failed: not a DVC repository")

    monkeypatch.setattr(dvc_queue, "baseline_experiments", broken)
    with pytest.raises(CrosstuneError, match="not a DVC repository"):
        dvc_queue.run_queue(["a"], jobs=1, poll_seconds=0)


def test_an_example_on_a_changed_workspace_names_the_files_and_the_ways_out(tmp_path: Path) -> None:
    """The example would otherwise mix the user's edits into the experiment and then throw them away."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text("finetune:\n  lr: 0.001\n", encoding="utf-8")
    subprocess.run(["git", "add", "params.yaml"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-q", "-m", "p"],
                   cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text("finetune:\n  lr: 0.002\n", encoding="utf-8")
    with pytest.raises(CrosstuneError, match=r"uncommitted changes \(params\.yaml\); commit or stash them first.*"
                                             r"--keep"):
        run_example(tmp_path / "preset.yaml", repo=tmp_path)


def test_example_names_are_ref_safe_and_say_the_preset() -> None:
    name = experiment_name("examples/asr.yaml")
    assert re.fullmatch(r"asr-\d{8}-\d{6}", name)
    assert subprocess.run(["git", "check-ref-format", f"refs/exps/{name}"], check=False).returncode == 0


def test_example_metrics_print_one_aligned_line_per_key(tmp_path: Path) -> None:
    (tmp_path / "eval.json").write_text('{"wer": 0.01181, "test_examples": 120}', encoding="utf-8")
    assert format_metrics(tmp_path / "eval.json").splitlines() == [f"  {'wer':40s} 0.0118",
                                                                   f"  {'test_examples':40s} 120"]
