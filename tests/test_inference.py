"""crosstune.inference: `crosstune predict` errors clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_predict_cli_errors_clearly(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "crosstune", "predict", "--model", str(tmp_path / "nope"),
                             "--input", "x.csv", "--output", "y.csv"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "no config.json" in result.stderr


def test_model_card_says_which_model_the_guard_exported(tmp_path: Path) -> None:
    """The card names what the directory holds: a fine-tuned model, the probe stage's, or the scratch stage's."""
    from crosstune.inference.export import model_card, trained_as
    from crosstune.transfer_model.settings import GUARD_RECORD, PROBE_RECORD

    kinds = {}
    for kind, record in (("finetuned", None), ("probe", PROBE_RECORD), ("scratch", GUARD_RECORD)):
        (tmp_path / kind).mkdir()
        if record:
            (tmp_path / kind / record).write_text("{}", encoding="utf-8")
        kinds[kind] = trained_as(tmp_path / kind)
    assert kinds == {"finetuned": "finetuned", "probe": "probe", "scratch": "scratch"}
    cards = {kind: model_card({"task": "classification", "labels": ["a", "b"]}, {}, {"f1_macro": 0.5},
                              {"name": "tiny"}, {}, "abc", "md5", "sha", trained=kind) for kind in kinds}
    assert ") fine-tuned with crosstune." in cards["finetuned"]
    assert "the linear probe" in cards["probe"] and "fine-tuned with" not in cards["probe"]
    assert "random weights" in cards["scratch"] and "fine-tuned with" not in cards["scratch"]
