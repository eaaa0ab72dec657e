"""`crosstune check`: every params problem and data problem listed at once, before any stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, make_texts, write_table

from crosstune.checks import apply_overrides, check_project, name_problems
from crosstune.cli import main as cli_main
from crosstune.config import (
    EvaluateParams,
    from_mapping,
    params_problems,
    section_problems,
)
from crosstune.entry_point import run_main
from crosstune.errors import ConfigError
from crosstune.experiments.example import preset_overrides


def _project(tmp_path: Path, params: dict) -> Path:
    write_table(tmp_path / "data" / "train.csv", make_texts(12, seed=1))
    write_table(tmp_path / "data" / "test.csv", make_texts(4, seed=2))
    params = {"data": {"train": "data/train.csv", "test": "data/test.csv"}, **params}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return tmp_path / "params.yaml"


def test_every_problem_of_a_section_is_listed() -> None:
    """The section's own checks and the registry names (looked up where the section has other problems too)."""
    from crosstune.checks import name_problems

    finetune = {"lrr": 1e-4, "optimizer": "adamx", "epochs": "two", "batch_size": 0}
    problems = section_problems("finetune", finetune) + name_problems({"finetune": finetune})
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "finetune.lrr: unknown key; did you mean 'lr'?" in text
    assert "finetune.optimizer: unknown optimizer 'adamx'" in text and "'adamw'" in text
    assert "finetune.epochs: expected a whole number" in text
    assert "finetune.batch_size" in text


def test_problems_across_sections_and_none_for_the_shipped_params() -> None:
    problems = params_problems({"base": {"seed": "x"}, "head": {"dropout": 2}, "freeze": {"depht": 3}})
    assert [problem.split(":")[1].strip() for problem in problems] == ["base.seed", "freeze.depht", "head.dropout"]
    assert params_problems(yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))) == []


def test_a_bare_off_read_as_false_is_the_choice_off() -> None:
    """`dvc exp run -S` rewrites params.yaml without quotes; YAML 1.1 then reads `guard: off` as False."""
    assert from_mapping(EvaluateParams, yaml.safe_load("guard: off"), "evaluate").guard == "off"


def test_overrides_are_parsed_as_dvc_would() -> None:
    params = apply_overrides({"finetune": {"lr": 1e-4}}, ["finetune.lr=2.0e-5", "freeze.depth=all", "head.dropout=0"])
    assert params == {"finetune": {"lr": 2e-5}, "freeze": {"depth": "all"}, "head": {"dropout": 0}}
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["finetune.lr"])


def test_valid_project_has_no_problems(tmp_path: Path) -> None:
    assert check_project(_project(tmp_path, {})) == []


def test_params_and_data_problems_come_together(tmp_path: Path) -> None:
    params = _project(tmp_path, {"finetune": {"lrr": 1.0}, "prepare": {"label_column": "stars"}})
    problems = check_project(params)
    assert len(problems) == 3, problems
    assert "finetune.lrr: unknown key" in problems[0]
    assert problems[1].startswith("data.train: ") and "missing column(s) ['stars']" in problems[1]
    assert problems[2].startswith("data.test: ") and "test.csv" in problems[2]


def test_missing_data_path_names_the_key(tmp_path: Path) -> None:
    problems = check_project(_project(tmp_path, {}), ["data.test=data/absent.csv"])
    assert len(problems) == 1 and problems[0].startswith("params.yaml: data.test:") and "absent.csv" in problems[0]


def test_cli_lists_all_problems_then_fails_with_their_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = _project(tmp_path, {"finetune": {"lrr": 1.0, "optimizer": "adamx"}})
    assert run_main(cli_main, ["check", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "finetune.lrr" in err and "finetune.optimizer" in err
    assert err.strip().splitlines()[-1].startswith("crosstune: error: 2 problem(s)")
    assert run_main(cli_main, ["check", "--params", str(params), "-S", "finetune.optimizer=adam"]) == 2
    assert "1 problem(s)" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(path.name for path in (REPO_ROOT / "examples").glob("*.yaml")))
def test_every_example_preset_passes_the_check_on_names_and_values(preset: str) -> None:
    """`make repro EXAMPLE=...` runs `crosstune check` with the preset first: its params and names must pass
    (its data is built or committed separately, so the data check is not run here)."""
    from crosstune.config import params_problems, read_params_file

    overrides = preset_overrides(str(REPO_ROOT / "examples" / preset))[1::2]
    params = apply_overrides(read_params_file(REPO_ROOT / "params.yaml"), overrides)
    assert params_problems(params) + name_problems(params) == []
