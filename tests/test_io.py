"""crosstune.io: atomic outputs, interrupted replacements undone, and damaged artifacts named with their fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from crosstune.errors import ArtifactError


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


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_a_truncated_attached_model_names_the_file_and_the_fix(attached: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from crosstune.pipeline.finetune import finetune_stage

    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")  # artifact_fix looks the stage up here
    monkeypatch.chdir(tmp_path)
    weights = attached["initial"] / "model.safetensors"
    _truncate(weights)
    with pytest.raises(ArtifactError) as error:
        finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(tmp_path / "models" / "finetuned"),
                       str(tmp_path / "live"), str(attached["params"]))
    message = str(error.value)
    assert str(weights.relative_to(tmp_path)) in message and "truncated or corrupt" in message
    assert "dvc checkout models/initial/model.safetensors" in message and "dvc repro -f attach_head" in message
    assert "\n" not in message
    assert not (tmp_path / "models" / "finetuned").exists()


def test_missing_or_broken_config_json(attached: dict[str, Path], tmp_path: Path) -> None:
    import crosstune

    model = tmp_path / "model"
    shutil.copytree(attached["initial"], model)
    (model / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"config\.json: not valid JSON .*dvc checkout"):
        crosstune.load(str(model))
    config = json.loads((attached["initial"] / "config.json").read_text())
    del config["head"]
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"config\.json: incomplete or malformed"):
        crosstune.load(str(model))
    (model / "config.json").unlink()
    with pytest.raises((ArtifactError, FileNotFoundError), match=r"config\.json"):
        crosstune.load(str(model))


def test_a_corrupt_encoded_split_names_the_file(attached: dict[str, Path]) -> None:
    from crosstune.data.batching import load_any_split

    split = attached["encoded"] / "train.safetensors"
    split.write_bytes(b"\x00" * 40)
    with pytest.raises(ArtifactError, match=r"train\.safetensors: truncated or corrupt"):
        load_any_split(split)


def test_stage_script_and_predict_print_one_line(attached: dict[str, Path], tmp_path: Path) -> None:
    weights = attached["initial"] / "model.safetensors"
    _truncate(weights)
    stage = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "finetune.py"), "--initial",
                            str(attached["initial"]), "--encoded", str(attached["encoded"]), "--model",
                            str(tmp_path / "finetuned"), "--live", str(tmp_path / "live"), "--params",
                            str(attached["params"])], capture_output=True, text=True, check=False)
    predict = subprocess.run([sys.executable, "-m", "crosstune", "predict", "--model", str(attached["initial"]),
                              "--input", "nothing.csv", "--output", str(tmp_path / "out.csv")],
                             capture_output=True, text=True, check=False)
    for result in (stage, predict):
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("crosstune: error:")]
        assert len(errors) == 1 and "model.safetensors: truncated or corrupt" in errors[0], result.stderr
        assert "Traceback" not in result.stderr
