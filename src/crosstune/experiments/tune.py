"""`crosstune tune SPACE`: Optuna over a search space, every trial a DVC experiment.

Peers (Trainer's ``hyperparameter_search``, SetFit, Ludwig, AutoGluon) tune inside one process and keep
nothing reproducible. Here each trial is ``dvc exp run --temp -n tune-<study>-<number> -S key=value ...``:
`dvc exp show` lists it with its params and metrics, `dvc exp apply NAME` brings it into the workspace, and
stages it does not change come from DVC's cache.

- Sampler: TPE (Bergstra et al., NeurIPS 2011, https://papers.nips.cc/paper/4443): model p(x | y < y*) and
  p(x | y >= y*) with Parzen estimators and propose the x maximising their ratio.
- Pruner: median stopping (Golovin et al., KDD 2017, "Google Vizier"): stop a trial at epoch t when its
  validation metric is worse than the median of earlier trials' at t. The finetune stage reports each
  epoch to the study (:mod:`crosstune.experiments.trial_pruning`); a pruned trial fails its experiment.
- The study lives in Optuna's storage: SQLite in ``.dvc/tmp`` by default; a database URL
  (``--storage postgresql://...``) lets workers on several machines join one study, each running its
  trials as DVC experiments it can share with ``dvc exp push``.

The search space is a params-like YAML file: the keys of ``params.yaml``, each leaf a list (categorical)
or ``{low, high}`` with optional ``log: true`` or ``step`` (whole numbers give an integer range).
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from crosstune.config import SECTIONS, params_problems, read_params_file
from crosstune.errors import ConfigError
from crosstune.experiments.dvc_queue import (
    baseline_experiments,
    dvc_command,
    dvc_environment,
)
from crosstune.experiments.sweep import (
    TEST_METRICS,
    VALIDATION_METRICS,
    lower_is_better,
)
from crosstune.experiments.trial_pruning import PRUNED_MESSAGE, TrialSpec, open_storage

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///.dvc/tmp/crosstune-tune.db"  # local and git-ignored; a database URL to share it
LOG_DIR = Path(".dvc/tmp/crosstune-tune")  # each trial's `dvc exp run` output
STARTUP_TRIALS = 4  # TPE samples at random until this many trials exist


@dataclass(frozen=True)
class SearchSpace:
    """``params key -> optuna distribution``, from a params-like YAML file."""

    distributions: dict[str, Any]

    @classmethod
    def from_file(cls, path: str | Path) -> "SearchSpace":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such search-space file; write one like examples/tune/text.yaml.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str = "search space") -> "SearchSpace":
        import dataclasses

        if not isinstance(data, dict) or not data:
            raise ConfigError(f"{source}: expected params sections with the keys to tune, e.g. finetune: {{lr: "
                              f"{{low: 1.0e-5, high: 3.0e-4, log: true}}}}.")
        distributions = {}
        for section, keys in data.items():
            if section not in SECTIONS:
                raise ConfigError(f"{source}: {section}: not a params section; valid sections: {sorted(SECTIONS)}")
            if not isinstance(keys, dict):
                raise ConfigError(f"{source}: {section}: expected a mapping of its keys to ranges or lists.")
            names = [field.name for field in dataclasses.fields(SECTIONS[section])]
            for key, spec in keys.items():
                if key not in names:
                    raise ConfigError(f"{source}: {section}.{key}: unknown key; valid keys in '{section}': {names}")
                distributions[f"{section}.{key}"] = _distribution(f"{source}: {section}.{key}", spec)
        return cls(distributions)


def _number(key: str, value: Any) -> float | int:
    if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}.")
    return value


def _distribution(key: str, spec: Any) -> Any:
    """A list -> categorical; ``{low, high, log?, step?}`` -> an int (whole-number bounds) or float range."""
    import optuna

    if isinstance(spec, list) and spec:
        return optuna.distributions.CategoricalDistribution(spec)
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "step"}:
        raise ConfigError(f"{key}: expected a list of values or {{low, high}} with optional log: true or step, "
                          f"got {spec!r}.")
    low, high = _number(key, spec["low"]), _number(key, spec["high"])
    step = _number(key, spec["step"]) if spec.get("step") is not None else None
    log = bool(spec.get("log", False))
    if not low < high:
        raise ConfigError(f"{key}: low ({low}) must be below high ({high}).")
    try:
        if all(isinstance(value, int) for value in (low, high, step or 1)):
            return optuna.distributions.IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        return optuna.distributions.FloatDistribution(float(low), float(high), log=log,
                                                      step=None if step is None else float(step))
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from error


def absolute_storage(storage: str, repo: Path) -> str:
    """A relative SQLite URL resolved against the repository, so trials running in DVC's temporary copies
    (another working directory) reach the same file."""
    prefix = "sqlite:///"
    if storage.startswith(prefix) and not storage[len(prefix):].startswith("/"):
        path = (repo / storage[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return storage


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """``-S`` values for a trial's sampled params (JSON, which DVC's YAML parser reads back exactly)."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def tune(space_path: str | Path, trials: int, study_name: str | None = None, storage: str = DEFAULT_STORAGE,
         repo: str | Path = ".", metric: str | None = None, seed: int | None = None,
         fixed: Sequence[str] = ()) -> Any:
    """Run ``trials`` more trials of the study (created, or joined when it exists) and return it.

    ``fixed``: ``section.key=value`` overrides every trial runs with (e.g. ``evaluate.guard=off``: tuning need
    not pay for the negative-transfer guard's scratch model). Each trial: ask TPE for params, check them with `crosstune check`'s params checks (a bad combination is
    a failed trial, not a failed run), run them as a DVC experiment with the trial named in the environment
    (pruning), and tell the study the validation metric of the best epoch, pruned or failed.
    """
    import optuna
    from tqdm import tqdm

    from crosstune.checks import apply_overrides
    from crosstune.config import FinetuneParams, from_mapping

    repo = Path(repo).resolve()
    space = SearchSpace.from_file(space_path)
    fixed = list(fixed)
    params = apply_overrides(read_params_file(repo / "params.yaml"), fixed)
    metric = metric or from_mapping(FinetuneParams, params.get("finetune"), "finetune").select_metric
    study_name = study_name or Path(space_path).stem
    storage = absolute_storage(storage, repo)
    seed = from_mapping(SECTIONS["base"], params.get("base"), "base").seed if seed is None else seed
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = TrialSpec(storage, study_name, 0, metric)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS, constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    direction = "minimize" if lower_is_better(metric) else "maximize"
    for attempt in range(3):  # two workers creating one study at once: the loser loads the winner's
        try:
            study = optuna.create_study(study_name=study_name, storage=open_storage(storage), load_if_exists=True,
                                        sampler=sampler, pruner=pruner, direction=direction)
            break
        except optuna.exceptions.DuplicatedStudyError:
            if attempt == 2:
                raise
    logger.info("tune: study %r in %s, %d trial(s) to run over %s, %s the validation %s", study_name, storage, trials,
                ", ".join(space.distributions), study.direction.name.lower(), metric)
    (repo / LOG_DIR).mkdir(parents=True, exist_ok=True)
    for _ in tqdm(range(trials), desc="tune", unit="trial", disable=None):
        trial = study.ask(space.distributions)
        name = f"tune-{study_name}-{trial.number}"
        overrides = fixed + trial_overrides(trial.params)
        trial.set_user_attr("experiment", name)
        trial.set_user_attr("overrides", overrides)
        problems = params_problems(apply_overrides(params, overrides))
        if problems:
            logger.warning("trial %d: %s", trial.number, problems[0])
            trial.set_user_attr("error", problems[0])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        state, value, message = _run_trial(repo, name, overrides, TrialSpec(**{**spec.__dict__,
                                                                                 "trial_id": trial._trial_id}))
        if message:
            trial.set_user_attr("error" if state == "fail" else "pruned", message)
        if state == "complete":
            study.tell(trial, value)
        else:
            study.tell(trial, state=getattr(optuna.trial.TrialState, state.upper()))
        logger.info("trial %d (%s): %s %s", trial.number, " ".join(overrides), state,
                    f"{metric}={value:.4f}" if value is not None else message)
    return study


def _run_trial(repo: Path, name: str, overrides: Sequence[str], spec: TrialSpec) -> tuple[str, float | None, str]:
    """Run one trial as ``dvc exp run --temp``; (complete | pruned | fail, validation value, last message)."""
    command = dvc_command("exp", "run", "--temp", "-n", name,
                          *[item for override in overrides for item in ("-S", override)])
    log_path = repo / LOG_DIR / f"{name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        completed = subprocess.run(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT, check=False,
                                   env=dvc_environment(spec.to_environment()))
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if completed.returncode:
        lines = [line for line in output.splitlines() if line.startswith("crosstune: error:")]
        message = lines[-1].removeprefix("crosstune: error: ") if lines else (output.strip().splitlines() or [""])[-1]
        return ("pruned" if PRUNED_MESSAGE in output else "fail"), None, f"{message} (log: {log_path})"
    for experiment in baseline_experiments(repo):
        if experiment.name == name:
            value = experiment.value(VALIDATION_METRICS, f"best_validation.{spec.metric}")
            if value is not None:
                return "complete", float(value), ""
    return "fail", None, (f"{name} ran but its commit's {VALIDATION_METRICS} has no best_validation.{spec.metric} "
                          f"(`git show {name}:{VALIDATION_METRICS}`, with the experiment's rev from `dvc exp show`)")


def study_table(study: Any, repo: str | Path = ".", test_keys: Sequence[str] = ("f1_macro", "accuracy")) -> str:
    """A Markdown table of every trial of the study (any worker's), best first: its state, validation value
    (a pruned trial's last one in brackets), the epochs it ran, its params, and the test metrics of its DVC
    experiment."""
    import optuna

    experiments = {experiment.name: experiment for experiment in baseline_experiments(repo)}
    lower = study.direction == optuna.study.StudyDirection.MINIMIZE
    keys = sorted({key for trial in study.trials for key in trial.params})

    def order(trial: Any) -> tuple:
        done = trial.state == optuna.trial.TrialState.COMPLETE
        return (not done, (trial.value if lower else -trial.value) if done else 0, trial.number)

    header = ["trial", "state", "validation", "epochs", *keys, *[f"test {key}" for key in test_keys], "experiment"]
    rows = []
    for trial in sorted(study.trials, key=order):
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        experiment = experiments.get(trial.user_attrs.get("experiment", "")) if complete else None
        test = experiment.file(TEST_METRICS) if experiment else {}
        epochs = max(trial.intermediate_values) if trial.intermediate_values else "-"
        if complete:
            validation = f"{trial.value:.4f}"
        elif trial.intermediate_values:  # a pruned (or running) trial: its last epoch's value, in brackets
            validation = f"({trial.intermediate_values[max(trial.intermediate_values)]:.4f})"
        else:
            validation = "-"
        rows.append([str(trial.number), trial.state.name.lower(), validation, str(epochs),
                     *[_cell(trial.params.get(key, "-")) for key in keys],
                     *[f"{test[key]:.4f}" if isinstance(test.get(key), (int, float)) else "-" for key in test_keys],
                     experiment.name if experiment else "-"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
