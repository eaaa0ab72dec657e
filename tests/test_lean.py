"""Lean stages: validating params and deciding the cache import no torch, so a stage that does not train
starts in about a second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, write_params

HEAVY = ("torch", "transformers", "torchvision", "sklearn", "dvclive", "peft")


def _imported_after(code: str, cwd: Path) -> list[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_loading_every_params_section_imports_nothing_heavy(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml")
    code = ("from crosstune.config import SECTIONS, load_section\n"
            "import crosstune.pipeline.prepare, crosstune.pipeline.cache, crosstune.cli\n"
            "[load_section(cls, 'params.yaml') for cls in SECTIONS.values()]")
    assert _imported_after(code, tmp_path) == []


def test_cache_stage_without_a_frozen_prefix_imports_nothing_heavy(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml")
    initial = tmp_path / "initial"
    initial.mkdir()
    (initial / "config.json").write_text(json.dumps({"model_type": "crosstune-text", "modality": "text",
                                                     "freeze": {"depth": 0}}))
    code = ("from crosstune.pipeline.cache import cache_stage\n"
            "meta = cache_stage('initial', 'encoded', 'features', 'params.yaml')\n"
            "assert meta['cached'] is False and 'freeze.depth is 0' in meta['reason']")
    assert _imported_after(code, tmp_path) == []
    assert json.loads((tmp_path / "features" / "meta.json").read_text())["cached"] is False


def test_task_and_modality_registries_import_nothing_heavy() -> None:
    code = ("from crosstune.tasks.registry import TASKS\nfrom crosstune.modalities import MODALITIES\n"
            "from crosstune.backbones.registry import BACKBONES, backbone_modality\n"
            "assert backbone_modality('whisper-tiny-en') == 'audio'\n"
            "[TASKS.get(name).headline for name in TASKS]")
    assert _imported_after(code, REPO_ROOT) == []


def test_stage_scripts_answer_help_without_torch() -> None:
    for script in sorted((REPO_ROOT / "stages").glob("*.py")):
        code = (f"import sys, runpy\nsys.argv = [{str(script)!r}, '--help']\n"
                f"try:\n    runpy.run_path({str(script)!r}, run_name='__main__')\nexcept SystemExit:\n    pass")
        assert _imported_after(code, REPO_ROOT) == [], script.name


def test_text_prepare_stage_imports_no_torch(tmp_path: Path) -> None:
    from conftest import make_texts, write_table

    write_params(tmp_path / "params.yaml")
    write_table(tmp_path / "train.csv", make_texts(10, seed=1))
    write_table(tmp_path / "test.csv", make_texts(4, seed=2))
    code = ("from crosstune.pipeline.prepare import prepare_stage\n"
            "prepare_stage('train.csv', 'test.csv', 'prepared', 'params.yaml')")
    assert "torch" not in _imported_after(code, tmp_path)
