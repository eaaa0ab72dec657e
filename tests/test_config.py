"""params.yaml loading: unknown keys, wrong types and bad choices fail with the key and the fix; names that pick
a registry entry fail where the entry is looked up and in `crosstune check`; config.py is a leaf."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_params

from crosstune.config import (
    FinetuneParams,
    FreezeParams,
    from_mapping,
    load_section,
    read_params_file,
)
from crosstune.errors import ConfigError
from crosstune.registry import Registry


def test_repository_params_load_for_every_section() -> None:
    from crosstune.config import SECTIONS

    params_path = Path(__file__).resolve().parents[1] / "params.yaml"
    for cls in SECTIONS.values():
        assert isinstance(load_section(cls, params_path), cls)


@pytest.mark.parametrize("section", sorted(set(__import__("crosstune.config").config.SECTIONS)))
def test_defaults_equal_the_shipped_params_file(section: str) -> None:
    """One source of defaults: each dataclass's defaults are what params.yaml ships, key by key, and
    params.yaml lists every key (a user reads the whole recipe there)."""
    from crosstune.config import SECTIONS, to_dict

    shipped = read_params_file(Path(__file__).resolve().parents[1] / "params.yaml")
    assert sorted(shipped[section]) == sorted(to_dict(SECTIONS[section]()))
    assert to_dict(from_mapping(SECTIONS[section], shipped[section], section)) == to_dict(SECTIONS[section]())


def test_unknown_key_names_key_and_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"finetune\.learning_rate.*unknown key.*'lr'"):
        from_mapping(FinetuneParams, {"learning_rate": 0.1}, "finetune")


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("finetune", {"lr": -1.0}, r"finetune\.lr"),
        ("finetune", {"epochs": 2.5}, r"finetune\.epochs.*whole number"),
        ("finetune", {"class_weights": "auto"}, r"finetune\.class_weights"),
        ("freeze", {"depth": "most"}, r"freeze\.depth.*'all'"),
        ("freeze", {"depth": -1}, r"freeze\.depth.*negative"),
        ("base", {"device": "tpu"}, r"base\.device.*\['auto', 'cpu', 'cuda'\]"),
        ("prepare", {"validation_fraction": 0.9}, r"prepare\.validation_fraction"),
        ("prepare", {"lowercase": "yes"}, r"prepare\.lowercase.*true or false"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, section: str, values: dict, message: str) -> None:
    from crosstune.config import SECTIONS

    path = write_params(tmp_path / "params.yaml", {section: values})
    with pytest.raises(ConfigError, match=message):
        load_section(SECTIONS[section], path)


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("finetune", {"optimizer": "adamx"}, r"finetune\.optimizer.*'adamx'.*\['adam', 'adamw', 'rmsprop', 'sgd'\]"),
        ("finetune", {"scheduler": "step"},
         r"finetune\.scheduler.*\['constant', 'cosine', 'linear', 'slanted_triangular'\]"),
        ("finetune", {"loss": "mse"},
         r"finetune\.loss: 'mse' does not suit a classification task.*\['cross_entropy'\]"),
        ("finetune", {"select_metric": "r2"}, r"finetune\.select_metric: 'r2' does not apply to a classification task"),
        ("finetune", {"adaptation": "dan"}, r"finetune\.adaptation.*'dan'.*'coral'"),
        ("head", {"type": "transformer"}, r"head\.type.*\['hf', 'linear', 'mlp'\]"),
        ("head", {"pooling": "max"}, r"head\.pooling.*\['cls', 'mean'\]"),
        ("head", {"type": "hf"}, r"head\.pooling: 'mean' does not apply to head\.type: hf"),
        ("prepare", {"task": "ranking"},
         r"prepare\.task: unknown task 'ranking'; valid task names: \['classification', 'detection', "
         r"'regression', 'token_classification', 'transcription'\]"),
        ("backbone", {"score": "leap"}, r"backbone\.score: unknown score 'leap'; valid: transferability scores"),
        ("backbone", {"name": "no-such-net"}, r"backbone\.name: 'no-such-net' is not a registered backbone"),
        ("evaluate", {"baselines": ["bert"]}, r"evaluate\.baselines.*'majority'"),
        ("evaluate", {"baselines": ["tfidf_ridge"]},
         r"evaluate\.baselines: 'tfidf_ridge' does not suit a classification"),
    ],
)
def test_bad_names_are_found_by_check_not_by_loading(tmp_path: Path, section: str, values: dict, message: str) -> None:
    """A name loads (config.py knows no registry) and `crosstune check` names the key and the valid names."""
    import re

    from crosstune.checks import name_problems
    from crosstune.config import SECTIONS

    path = write_params(tmp_path / "params.yaml", {section: values})
    load_section(SECTIONS[section], path)
    problems = name_problems(read_params_file(path))
    assert any(re.search(message, problem) for problem in problems), problems


def test_config_is_a_leaf() -> None:
    """Loading every section imports no crosstune module but config and errors: the cache stage does not depend
    on training code, and a typo check costs no torch import."""
    import subprocess
    import sys

    probe = ("import sys\nfrom crosstune.config import SECTIONS, load_section\n"
             "[load_section(cls, 'params.yaml') for cls in SECTIONS.values()]\n"
             "print(sorted(name for name in sys.modules if name.startswith('crosstune')))\n")
    root = Path(__file__).resolve().parents[1]
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "['crosstune', 'crosstune.config', 'crosstune.errors']"


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  lr: 5e-5\n", encoding="utf-8")
    assert load_section(FinetuneParams, path).lr == pytest.approx(5e-5)


def test_freeze_depth_accepts_int_and_all() -> None:
    assert from_mapping(FreezeParams, {"depth": 3}, "freeze").depth == 3
    assert from_mapping(FreezeParams, {"depth": "all", "patterns": ["*.bias"]}, "freeze").patterns == ("*.bias",)


def test_missing_and_malformed_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such params file"):
        read_params_file(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_params_file(bad)


def test_registry_rejects_duplicates_and_lists_names() -> None:
    registry: Registry[int] = Registry("widget")
    registry.register("b")(1)
    registry.register("a")(2)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(3)
    with pytest.raises(KeyError, match=r"unknown widget 'c'; valid widget names: \['a', 'b'\]"):
        registry.get("c")
    with pytest.raises(ConfigError, match=r"params\.yaml: widgets\.kind: unknown widget 'c'; valid widget names"):
        registry.get("c", "widgets.kind")


def test_load_section_takes_the_section_class_and_returns_it(tmp_path: Path) -> None:
    path = write_params(tmp_path / "params.yaml", {"freeze": {"depth": 2}})
    assert load_section(FreezeParams, path) == FreezeParams(depth=2)
    with pytest.raises(ConfigError, match="Registry is not a params section"):
        load_section(Registry, path)
