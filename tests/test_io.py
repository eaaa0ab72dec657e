"""crosstune.io: atomic outputs, interrupted replacements undone, and damaged artifacts named with their fix."""

from __future__ import annotations

import json
import re
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
    (tmp_path / "new.csv").write_text("review\nfine\n", encoding="utf-8")
    predict = subprocess.run([sys.executable, "-m", "crosstune", "predict", "--model", str(attached["initial"]),
                              "--input", str(tmp_path / "new.csv"), "--output", str(tmp_path / "out.csv")],
                             capture_output=True, text=True, check=False)
    for result in (stage, predict):
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("crosstune: error:")]
        assert len(errors) == 1 and "model.safetensors: truncated or corrupt" in errors[0], result.stderr
        assert "Traceback" not in result.stderr


def test_a_killed_writers_temporary_sibling_is_removed_by_the_next_write(tmp_path: Path) -> None:
    from crosstune.io import atomic_directory, write_json

    (tmp_path / ".model.abc123.tmp").mkdir()  # what a kill -9 mid-write leaves
    (tmp_path / ".model.abc123.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".eval.json.x1y2.tmp").write_text("{")
    (tmp_path / ".other.tmp").write_text("")  # not a sibling of these outputs: left alone
    with atomic_directory(tmp_path / "model") as staging:
        (staging / "config.json").write_text("{}")
    write_json(tmp_path / "eval.json", {"f1_macro": 0.5})
    assert sorted(path.name for path in tmp_path.iterdir()) == [".other.tmp", "eval.json", "model"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs mounted for the test (root only; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): the full-disk test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_clear_line_and_the_previous_outputs_stay(small_disk: Path, attached: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """A model directory and a metrics file written once; the disk then fills; writing them again fails with one
    line naming the output and the fix, and the first ones are byte for byte what they were."""
    from crosstune.io import atomic_directory, write_metrics

    model, metrics = small_disk / "models" / "initial", small_disk / "metrics" / "eval.json"
    shutil.copytree(attached["initial"], model)
    write_metrics(metrics, {"f1_macro": 0.5})
    before = {path.relative_to(small_disk): path.read_bytes() for path in small_disk.rglob("*") if path.is_file()}
    filler = small_disk / "filler"
    with filler.open("wb") as handle:  # everything but a few kilobytes
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    with pytest.raises(ArtifactError, match=r"models/initial: no space left on the device while writing it.*the "
                                            r"previous initial is untouched.*dvc gc"):
        with atomic_directory(model) as staging:
            shutil.copytree(attached["initial"], staging, dirs_exist_ok=True)
    with pytest.raises(ArtifactError, match=r"eval\.json: no space left on the device"):
        write_metrics(metrics, {"f1_macro": 0.6, "rows": list(range(20000))})
    after = {path.relative_to(small_disk): path.read_bytes() for path in small_disk.rglob("*")
             if path.is_file() and not path.name.startswith("filler")}
    assert after == before  # nothing half-written, nothing lost


def test_a_stage_on_a_full_disk_prints_one_line(small_disk: Path, attached: dict[str, Path]) -> None:
    """The attach-head stage writing onto a full disk: exit status 2 and one line, no traceback."""
    filler = small_disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    result = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "attach_head.py"), "--backbone",
                             str(attached["backbone"]), "--prepared", str(attached["prepared"]), "--model",
                             str(small_disk / "initial"), "--report", str(small_disk / "freeze.json"),
                             "--params", str(attached["params"])], capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert re.search(r"crosstune: error: .*: no space left on the device", result.stderr), result.stderr[-2000:]
