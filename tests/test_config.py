"""params.yaml loading: unknown keys, wrong types and bad choices fail with the key and the fix."""

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
    for section in SECTIONS:
        load_section(section, params_path)


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
        ("finetune", {"optimizer": "adamx"}, r"finetune\.optimizer.*'adamx'.*\['adam', 'adamw', 'rmsprop', 'sgd'\]"),
        ("finetune", {"scheduler": "step"}, r"finetune\.scheduler.*\['constant', 'cosine', 'linear', 'slanted_triangular'\]"),
        ("finetune", {"lr": -1.0}, r"finetune\.lr"),
        ("finetune", {"epochs": 2.5}, r"finetune\.epochs.*whole number"),
        ("finetune", {"class_weights": "auto"}, r"finetune\.class_weights"),
        ("head", {"type": "transformer"}, r"head\.type.*\['hf', 'linear', 'mlp'\]"),
        ("head", {"pooling": "max"}, r"head\.pooling.*\['cls', 'mean'\]"),
        ("freeze", {"depth": "most"}, r"freeze\.depth.*'all'"),
        ("freeze", {"depth": -1}, r"freeze\.depth.*negative"),
        ("base", {"device": "tpu"}, r"base\.device.*\['auto', 'cpu', 'cuda'\]"),
        ("prepare", {"validation_fraction": 0.9}, r"prepare\.validation_fraction"),
        ("prepare", {"lowercase": "yes"}, r"prepare\.lowercase.*true or false"),
        ("evaluate", {"baselines": ["bert"]}, r"evaluate\.baselines.*'majority'"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, section: str, values: dict, message: str) -> None:
    path = write_params(tmp_path / "params.yaml", {section: values})
    with pytest.raises(ConfigError, match=message):
        load_section(section, path)


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  lr: 5e-5\n", encoding="utf-8")
    assert load_section("finetune", path).lr == pytest.approx(5e-5)


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
