"""crosstune.inference: `crosstune predict` errors clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crosstune", "predict", *args], capture_output=True, text=True,
                          check=False)


def _one_error(result: subprocess.CompletedProcess) -> str:
    """The single `crosstune: error:` line of a failed command (and no traceback)."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("crosstune: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_predict_names_the_flag_that_carried_a_bad_path(attached: dict[str, Path], tmp_path: Path) -> None:
    table = tmp_path / "new.csv"
    table.write_text("review\ngreat drug\n", encoding="utf-8")
    out = str(tmp_path / "out.csv")
    missing_model = _one_error(_predict("--model", str(tmp_path / "nope"), "--input", str(table), "--output", out))
    assert f"--model {tmp_path / 'nope'}: no such directory" in missing_model
    file_as_model = _one_error(_predict("--model", str(table), "--input", str(table), "--output", out))
    assert "is a file, not directory" in file_as_model and file_as_model.count("--model") == 1
    missing_input = _one_error(_predict("--model", str(attached["initial"]), "--input", "nope.csv", "--output", out))
    assert "--input nope.csv: no such file" in missing_input and "dvc.yaml" not in missing_input
    not_a_model = _one_error(_predict("--model", str(tmp_path), "--input", str(table), "--output", out))
    assert "no config.json" in not_a_model


def test_predict_reads_the_column_the_model_was_trained_from(attached: dict[str, Path], tmp_path: Path) -> None:
    """The synthetic reviews' column is `review` (prepare.text_column): the model records it, so predict needs no
    --text-column; another column name is named back with where it came from."""
    import json

    import pandas as pd

    from crosstune.pipeline.finetune import finetune_stage

    model = tmp_path / "finetuned"
    finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(model), str(tmp_path / "live"),
                   str(attached["params"]))
    assert json.loads((model / "config.json").read_text())["input_column"] == "review"
    table = tmp_path / "new.csv"
    pd.DataFrame({"id": [1, 2], "review": ["works well", "awful nausea"]}).to_csv(table, index=False)
    result = _predict("--model", str(model), "--input", str(table), "--output", str(tmp_path / "o.csv"))
    assert result.returncode == 0, result.stderr
    assert list(pd.read_csv(tmp_path / "o.csv").columns[:4]) == ["id", "review", "predicted_label", "predicted_score"]
    pd.DataFrame({"body": ["works well"]}).to_csv(table, index=False)
    wrong = _one_error(_predict("--model", str(model), "--input", str(table), "--output", str(tmp_path / "o.csv")))
    assert "no column 'review' (the column" in wrong and "was trained from" in wrong and "--text-column" in wrong
    given = _one_error(_predict("--model", str(model), "--input", str(table), "--output", str(tmp_path / "o.csv"),
                                "--text-column", "text"))
    assert "no column 'text' (given by --text-column" in given
    pd.DataFrame({"text": ["works well"]}).to_csv(table, index=False)  # the prepared splits' name is read too
    assert _predict("--model", str(model), "--input", str(table), "--output", str(tmp_path / "o.csv")).returncode == 0


def test_predict_says_when_the_table_holds_inputs_of_another_model(attached: dict[str, Path], tmp_path: Path) -> None:
    """A table of recordings given to a text model: named as such, not fed to the tokenizer as text."""
    import pandas as pd

    table = tmp_path / "clips.csv"
    pd.DataFrame({"review": ["a/0_jackson_0.wav", "a/1_theo_3.wav", "b/2_lucas_1.wav"]}).to_csv(table, index=False)
    error = _one_error(_predict("--model", str(attached["initial"]), "--input", str(table), "--output",
                                str(tmp_path / "o.csv")))
    assert "column 'review' holds audio inputs" in error and "is a text classification model" in error


def test_zoo_list_fits_a_100_column_terminal_and_markdown_keeps_every_field() -> None:
    import os

    from crosstune.backbones.zoo import ZOO

    environment = {**os.environ, "COLUMNS": "100"}
    compact = subprocess.run([sys.executable, "-m", "crosstune", "zoo"], capture_output=True, text=True, check=True,
                             env=environment).stdout
    lines = compact.splitlines()
    assert len(lines) == len(ZOO.names()) + 1 and max(len(line) for line in lines) <= 100
    assert lines[0].split() == ["backbone.name", "modality", "model", "licence", "here"]
    markdown = subprocess.run([sys.executable, "-m", "crosstune", "zoo", "list", "--markdown"], capture_output=True,
                              text=True, check=True, env=environment).stdout
    assert markdown.startswith("| backbone.name | modality | model | pretraining | licence | source |")


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
