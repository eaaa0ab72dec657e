"""`crosstune check`: every params section and every data path validated at once, before any stage runs.

Why: each stage loads only its own params section, so under plain `dvc repro` a typo in `finetune` (say
``lrr``) surfaces only after prepare, backbone and attach_head have run, and a second typo only on the next
try. This reads the whole params file (with ``-S key=value`` overrides applied, as `dvc exp run -S` would),
runs every section's checks, looks every registry name up (the task, backbones, head, optimizer, scheduler,
loss, metric, adaptation, scores and baselines: :func:`name_problems`; the stages look them up again where
they build what they name) and runs the prepare stage's own data validation, and returns all problems in one
list. `make repro` and `crosstune example` run it first.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import yaml

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    SECTIONS,
    BaseParams,
    PrepareParams,
    from_mapping,
    params_problems,
    read_params_file,
)
from crosstune.errors import ConfigError, CrosstuneError

logger = logging.getLogger(__name__)

DATA_KEYS = ("train", "test", "source")  # the paths dvc.yaml's prepare stage reads from params.yaml's `data`


def apply_overrides(params: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``params`` with each ``section.key=value`` set (the value parsed as YAML, as `dvc exp run -S` does)."""
    params = copy.deepcopy(params)
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"-S {override!r}: expected section.key=value, e.g. -S finetune.lr=2e-5.")
        *sections, leaf = key.strip().split(".")
        node = params
        for section in sections:
            child = node.setdefault(section, {})
            if not isinstance(child, dict):
                raise ConfigError(f"-S {override!r}: {section} is not a section of the params file.")
            node = child
        node[leaf] = yaml.safe_load(text)
    return params


def data_problems(params: dict[str, Any], root: Path) -> list[str]:
    """What the prepare stage would reject in ``data.train`` / ``data.test`` / ``data.source``, read with
    the prepare stage's own code (so the check and the stage cannot disagree). Relative paths are taken from
    ``root``, where dvc.yaml lives."""
    from crosstune.data.splitting import load_examples, prepare_target_data
    from crosstune.errors import DataError

    data = params.get("data") or {}
    if not isinstance(data, dict) or not data.get("train"):
        return ["params.yaml: data.train: not set; name the target training table or class folder "
                "(e.g. data.train: data/raw/train.csv)."]
    try:
        prepare = from_mapping(PrepareParams, params.get("prepare"), "prepare")
    except ConfigError:
        return []  # already reported by the params checks; the data cannot be read without them
    try:
        seed = from_mapping(BaseParams, params.get("base"), "base").seed
    except ConfigError:
        seed = BaseParams().seed  # a bad seed is reported already; the split it would make is not the point here
    paths = {key: root / str(data[key]) for key in DATA_KEYS if data.get(key)}
    for key, path in paths.items():
        if not path.exists():
            return [f"params.yaml: data.{key}: {path} does not exist; fix the path (relative to {root})."]
    try:
        prepare_target_data(paths["train"], paths.get("test"), prepare, seed, paths.get("source"))
        return []
    except ConfigError:
        return []  # an unknown prepare.task: reported by the name checks; the data cannot be read without it
    except DataError as whole:
        problems = []
        for key in ("train", "test"):  # each file on its own, to report a problem in both in one go
            if key in paths:
                try:
                    load_examples(paths[key], prepare)
                except DataError as error:
                    problems.append(f"data.{key}: {error}")
        return problems or [f"data: {whole}"]


def name_problems(params: dict[str, Any]) -> list[str]:
    """Every params value that names a registry entry and names none (or one that does not suit the task): the
    checks the stages make where they build what the names pick, made here at once. Each name is read on its own
    (its default where the key is absent), so a section with other problems still has its names checked; a value
    of the wrong type is reported by the params checks already and skipped here."""
    from crosstune.backbones.registry import backbone_modality
    from crosstune.evaluation.baselines import BASELINE_TASKS, BASELINES
    from crosstune.heads.registry import check_head_params
    from crosstune.methods.registry import ADAPTATIONS, NO_ADAPTATION
    from crosstune.selection.scores import check_score
    from crosstune.tasks.registry import TASKS, get_task
    from crosstune.training.optimization import OPTIMIZERS, SCHEDULERS

    def value(section: str, key: str) -> Any:
        raw = params.get(section)
        chosen = raw.get(key, getattr(SECTIONS[section](), key)) if isinstance(raw, dict) else \
            getattr(SECTIONS[section](), key)
        return chosen if isinstance(chosen, str) or (isinstance(chosen, list) and
                                                     all(isinstance(item, str) for item in chosen)) else None

    def names(section: str, key: str) -> list[str]:
        chosen = value(section, key)
        return [] if chosen is None else [chosen] if isinstance(chosen, str) else list(chosen)

    checks: list[Any] = [lambda name=name: get_task(name) for name in names("prepare", "task")]
    head = {key: value("head", key) for key in ("type", "pooling")}
    if None not in head.values():
        checks.append(lambda: check_head_params(SECTIONS["head"](**head)))
    select = value("backbone", "select")
    backbones = names("backbone", "candidates") if select == "score" else names("backbone", "name")
    checks.extend((lambda name=name: backbone_modality(name)) for name in backbones)
    checks.extend((lambda name=name: check_score(name)) for name in names("backbone", "score"))
    for registry, section, key in ((OPTIMIZERS, "finetune", "optimizer"), (SCHEDULERS, "finetune", "scheduler"),
                                   (BASELINES, "evaluate", "baselines")):
        checks.extend((lambda registry=registry, name=name, key=f"{section}.{key}": registry.check(name, key))
                      for name in names(section, key))
    checks.extend((lambda name=name: ADAPTATIONS.check(name, "finetune.adaptation"))
                  for name in names("finetune", "adaptation") if name != NO_ADAPTATION)
    problems = _run(checks)
    task_name = value("prepare", "task")
    if task_name not in TASKS:
        return problems
    task = get_task(task_name)
    suits: list[Any] = []
    suits.extend((lambda name=name: task.check_loss(name)) for name in names("finetune", "loss"))
    suits.extend((lambda name=name: task.check_select_metric(name)) for name in names("finetune", "select_metric"))
    if select == "score" or task.model_form == "head":  # a recogniser or detector is named, never ranked or scored
        suits.extend((lambda name=name: task.transferability(name)) for name in names("backbone", "score"))
    suits.extend((lambda name=name: _check_baseline_task(name, task.name, BASELINE_TASKS))
                 for name in names("evaluate", "baselines") if name in BASELINES)
    return problems + [problem for problem in _run(suits) if problem not in problems]


def _check_baseline_task(name: str, task: str, tasks: dict[str, str]) -> None:
    if tasks[name] != task:
        suitable = sorted(key for key, kind in tasks.items() if kind == task)
        raise ConfigError(f"params.yaml: evaluate.baselines: {name!r} does not suit a {task} task; use {suitable}.")


def _run(checks: Sequence[Any]) -> list[str]:
    """Each check's error message, in order (a check passes by returning)."""
    problems = []
    for check in checks:
        try:
            check()
        except (ConfigError, KeyError) as error:
            problems.append(str(error.args[0] if isinstance(error, KeyError) else error))
    return problems


def check_project(params_path: str | Path = DEFAULT_PARAMS_PATH, overrides: Sequence[str] = ()) -> list[str]:
    """All problems of the params file (with ``overrides``) and the data it points at; empty when a run
    can start."""
    params_path = Path(params_path)
    params = apply_overrides(read_params_file(params_path), overrides)
    problems = params_problems(params)
    problems += name_problems(params)
    problems += data_problems(params, params_path.resolve().parent)
    return problems


def run_check(params_path: str | Path = DEFAULT_PARAMS_PATH, overrides: Sequence[str] = ()) -> None:
    """Print every problem, one per line, and fail with their count; log one line when all is well."""
    import sys

    problems = check_project(params_path, overrides)
    if problems:
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        raise CrosstuneError(f"{len(problems)} problem(s) in {params_path} or its data (listed above); fix them and "
                             f"run `crosstune check` again.")
    logger.info("check: %s and its data are valid; `dvc repro` can start", params_path)
