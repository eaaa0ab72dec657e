"""crosstune.tasks and crosstune.modalities: every task and every modality, parametrised over its registry, and
the architecture they hold up: no code outside ``tasks/`` asks which task it is, no module lists the
modalities, and no stage depends on the command line's module."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO_ROOT, write_audio_folder, write_image_folder

from crosstune.backbones.registry import BACKBONES, backbone_modality, backbone_names
from crosstune.config import PrepareParams
from crosstune.errors import ConfigError, DataError
from crosstune.modalities import (
    MODALITIES,
    folder_modality,
    modality_of_config,
    modality_of_tensors,
)
from crosstune.tasks.registry import TASKS, get_task, metric_direction
from crosstune.training.losses import LOSSES
from crosstune.transfer_model.modules import TransferModel

PACKAGE = REPO_ROOT / "src" / "crosstune"
LABELS = {"classification": ["negative", "neutral", "positive"], "regression": [],
          "token_classification": ["B-Disease", "I-Disease", "O"]}
NCBI_TEST = REPO_ROOT / "data" / "ner" / "ncbi_disease" / "test.tsv"


def _raw_labels(task: str, count: int = 30) -> pd.Series:
    """Label cells as a table holds them: names with stray spaces, or numbers written as text."""
    if task == "regression":
        return pd.Series([f" {index % 7 * 1.5} " for index in range(count)])
    return pd.Series([f" {LABELS['classification'][index % 3]}" for index in range(count)])


def _prepared(task, count: int = 30) -> pd.DataFrame:
    """A prepared table of ``count`` examples: read by the task's own reader where it has one (tagged sentences
    of the NCBI disease corpus), else texts with the labels of :func:`_raw_labels`."""
    own = task.read_examples(NCBI_TEST, PrepareParams(task=task.name))
    if own is not None:
        return own.iloc[:count].reset_index(drop=True)
    return pd.DataFrame({"text": [f"text {index}" for index in range(count)],
                         "label": task.read_labels(_raw_labels(task.name, count), Path("train.csv"))})


def _decoded(task, frame: pd.DataFrame):
    """The inputs of ``frame`` as `crosstune predict` decodes them (what ``prediction_records`` reads)."""
    from types import SimpleNamespace

    from crosstune.data.tagging import TaggedSentence

    if "words" not in frame.columns:
        return SimpleNamespace()
    return SimpleNamespace(sentences=[TaggedSentence(text, tuple(tuple(s) for s in json.loads(words)), ())
                                      for text, words in zip(frame["text"], frame["words"])])


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_is_a_complete_record(name: str) -> None:
    import transformers

    task = TASKS.get(name)
    assert task.name == name and task.output
    assert set(task.modalities) <= set(MODALITIES.names()) and task.modalities
    assert task.losses and all(loss in LOSSES for loss in task.losses)
    assert task.headline in task.metrics and "loss" in task.metrics and task.metrics["loss"] is False
    assert set(task.summary_metrics) | set(task.baseline_metrics) | set(task.card_metrics) <= \
        {*task.metrics, "mse", "precision_macro", "recall_macro"}
    assert task.model_form in ("head", "recogniser", "detector")
    if task.model_form == "detector":  # a torchvision detector: no Hugging Face class to export as
        assert not task.hf_auto_class
        return
    # token classification and speech recognition have no problem_type in transformers' configs
    assert hasattr(transformers, task.hf_auto_class)
    assert task.hf_problem_type or task.hf_auto_class in ("AutoModelForTokenClassification",
                                                          "AutoModelForSpeechSeq2Seq")


HEAD_TASKS = [name for name in TASKS.names() if TASKS.get(name).model_form == "head"]  # transcription (a whole
# recogniser, texts out): tests/test_transcription.py; detection (boxes out): tests/test_detection.py


@pytest.mark.parametrize("name", HEAD_TASKS)
def test_every_task_reads_encodes_scores_and_predicts(name: str) -> None:
    """Labels as a table holds them -> the prepared column -> training targets -> metrics of raw outputs, and
    predictions as `crosstune predict` and the evaluate stage write them."""
    task = TASKS.get(name)
    frame = _prepared(task)
    task.check_training_labels(frame, Path("train.csv"), 5)
    labels = task.label_names(frame)
    assert labels == LABELS[name]
    task.check_test_labels(frame, labels, Path("test.csv"))
    targets = task.encode_labels(frame["label"], labels)
    rows = int(targets.shape[0])  # one output row per example, or per word
    assert rows >= 30 and bool(task.labelled(targets.numpy()).all())
    width = task.num_outputs(labels)
    outputs = torch.randn(rows, width, generator=torch.Generator().manual_seed(0))
    scores = task.score(targets.tolist(), outputs, labels)
    assert task.headline in scores and all(np.isfinite(value) for value in scores.values())
    assert set(task.summary_metrics) <= set(scores) and set(task.baseline_metrics) <= set(scores)
    records = task.prediction_records(outputs, _decoded(task, frame), labels)
    assert len(records) == 30 and all(set(record) == set(records[0]) for record in records)
    columns = task.prediction_columns(outputs, targets, labels)
    assert "predicted" in columns and all(len(values) == 30 for values in columns.values())
    perfect = task.score(targets.tolist(), _perfect_outputs(task.loss_targets(targets), width), labels)
    assert not task.is_better(task.headline, scores[task.headline], perfect[task.headline])
    assert task.gain(task.headline, perfect[task.headline], scores[task.headline]) > 0
    loss = task.build_loss(task.losses[0], task.class_weights("none", targets, len(labels)), 0.0)
    assert torch.isfinite(loss(outputs, task.loss_targets(targets)))


def _perfect_outputs(targets: torch.Tensor, width: int) -> torch.Tensor:
    if targets.is_floating_point():
        return targets[:, None].clone()
    return torch.nn.functional.one_hot(targets, width).float() * 20


@pytest.mark.parametrize("name", HEAD_TASKS)
def test_every_task_fits_its_closed_form_output_layer(name: str) -> None:
    task = TASKS.get(name)
    rng = np.random.default_rng(0)
    classes = np.arange(60) % 3
    inputs = rng.normal(size=(60, 5)) + np.eye(5)[classes] * 4  # the class shows in one input each
    targets = {"classification": classes, "regression": inputs @ np.arange(5) + 1.0,
               "token_classification": np.stack([classes, np.arange(60) // 6], axis=1)}[name]  # (tag, sentence)
    weight, bias = task.fit_output_layer(inputs, targets, task.num_outputs(LABELS[name]), 1.0, None, 0)
    assert weight.shape == (task.num_outputs(LABELS[name]), 5) and bias.shape == (task.num_outputs(LABELS[name]),)
    outputs = torch.from_numpy(inputs @ weight.T + bias).float()
    fitted = task.score(targets.tolist(), outputs, LABELS[name])[task.headline]
    assert fitted > 0.5


def test_a_task_refuses_what_it_cannot_learn() -> None:
    classification, regression = TASKS.get("classification"), TASKS.get("regression")
    with pytest.raises(DataError, match=r"train\.csv: non-numeric label at row\(s\) 2 but prepare\.task is regression"):
        regression.read_labels(pd.Series(["1.5", "good"]), Path("train.csv"))
    with pytest.raises(DataError, match=r"images: image inputs support prepare\.task: classification or "
                                        r"detection, not "
                                        r"regression; set prepare\.task to one of those"):
        regression.check_modality("image", Path("images"))
    with pytest.raises(DataError, match=r"source\.csv: a source domain needs labels to align"):
        regression.check_source_domain(Path("source.csv"))
    with pytest.raises(ConfigError, match=r"backbone\.score: 'knn' needs class labels"):
        regression.transferability("knn")
    with pytest.raises(ConfigError, match=r"label_smoothing applies to classification"):
        regression.build_loss("mse", None, 0.1)
    with pytest.raises(ConfigError, match=r"select_metric: 'r2' does not apply to a classification task; use one of "
                                          r"\['accuracy', 'f1_macro', 'f1_weighted', 'loss'\]"):
        classification.check_select_metric("r2")
    with pytest.raises(DataError, match=r"too few training examples for class\(es\) 'rare': 1"):
        classification.check_training_labels(pd.DataFrame({"label": ["a"] * 5 + ["rare"]}), Path("t.csv"), 5)
    with pytest.raises(ConfigError, match=r"prepare\.task: unknown task 'ner'; valid task names"):
        get_task("ner")


def test_tagging_and_detection_refuse_training_data_without_enough_entities_or_boxes() -> None:
    """Both count what they learn from per name (entity type, box class): none at all, or too few of one, is one
    line naming the file, the counts and the fix."""
    tagging = get_task("token_classification")
    o_only = pd.DataFrame({"text": ["a b"], "label": ["O O"]})
    with pytest.raises(DataError, match=r"train\.tsv: no entities in the training data; tag some entities \(every tag is O\)"):
        tagging.check_training_labels(o_only, Path("train.tsv"), 2)
    one = pd.DataFrame({"text": ["flu and gene"], "label": ["B-Disease O B-Gene"]})
    with pytest.raises(DataError, match=r"too few training entities of type\(s\) \{'Disease': 1, 'Gene': 1\} "
                                        r"\(need at least prepare\.min_examples_per_class=2 each\)"):
        tagging.check_training_labels(one, Path("train.tsv"), 2)
    tagging.check_training_labels(one, Path("train.tsv"), 1)


def test_metric_directions_rank_losses_and_errors_lowest_first() -> None:
    from crosstune.experiments.sweep import lower_is_better

    assert metric_direction("f1_macro") is True and metric_direction("r2") is True
    assert metric_direction("loss") is False and metric_direction("mae") is False
    assert metric_direction("wer") is False and metric_direction("cer") is False  # transcription's error rates
    assert metric_direction("bleu") is None  # no task declares it: sweeps fall back to the name
    assert lower_is_better("loss") and lower_is_better("mae") and not lower_is_better("accuracy")
    assert TASKS.get("regression").is_better("mae", 0.1, 0.2) and not TASKS.get("regression").is_better("r2", 0.1, 0.2)
    assert TASKS.get("regression").gain("mae", 0.1, 0.3) == pytest.approx(0.2)


@pytest.mark.parametrize("name", MODALITIES.names())
def test_every_modality_is_a_complete_record(name: str) -> None:
    modality = MODALITIES.get(name)
    assert modality.column_param in {field.name for field in dataclasses.fields(PrepareParams)}
    assert modality.model_type == f"crosstune-{name}"
    assert TransferModel.by_modality[name].modality == name
    assert backbone_names(name), f"no registered backbone reads {name}"
    assert modality_of_tensors({modality.split_tensor: torch.zeros(1), "labels": torch.zeros(1)}) is modality
    assert modality_of_config({"modality": name}) is modality
    assert all(TASKS.get(task) for task in TASKS if name in TASKS.get(task).modalities)


def test_class_folders_are_read_as_the_modality_of_their_files(tmp_path: Path) -> None:
    assert folder_modality(write_image_folder(tmp_path / "images", per_class=1, seed=0)).name == "image"
    assert folder_modality(write_audio_folder(tmp_path / "audio", per_class=1, seed=0)).name == "audio"


def test_one_backbone_registry_classifies_names_directories_and_hub_ids(tmp_path: Path) -> None:
    assert {BACKBONES.get(name).modality for name in BACKBONES} == set(MODALITIES.names())
    assert backbone_modality("minilm-l6@3") == "text" and backbone_modality("efficientnet-lite0") == "image"
    assert backbone_modality("whisper-tiny-en") == "audio" and backbone_modality("org/model") == "text"
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"modality": "audio", "name": "tiny-audio-cnn"}))
    hugging_face = tmp_path / "bert"
    hugging_face.mkdir()
    (hugging_face / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert backbone_modality(str(saved)) == "audio" and backbone_modality(str(hugging_face)) == "text"
    with pytest.raises(ConfigError, match=r"'no-such-net' is not a registered backbone \["):
        backbone_modality("no-such-net")
    with pytest.raises(KeyError, match=r"unknown image backbone 'minilm-l6'; valid image backbone names"):
        from crosstune.backbones.registry import registered_loader

        registered_loader("minilm-l6", "image")


def _code_lines(exclude: tuple[str, ...]) -> list[tuple[str, int, str]]:
    """(file, line number, line) of every non-comment line of the package outside ``exclude``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(exclude):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.lstrip().startswith("#"):
                found.append((relative, number, line))
    return found


def test_no_code_outside_tasks_branches_on_the_task_name() -> None:
    branches = [f"{file}:{number}: {line.strip()}" for file, number, line in _code_lines(("tasks/",))
                if re.search(r"\btask\s*[!=]=|[!=]=\s*\"(classification|regression|token_classification|transcription|"
                             r"detection)\"", line)]
    assert branches == []


def test_no_module_lists_the_modalities_but_the_modality_records() -> None:
    """Only the records say which modalities exist (a task's record says which it accepts)."""
    listed = [f"{file}:{number}: {line.strip()}" for file, number, line in _code_lines(("modalities.py", "tasks/"))
              if re.search(r"\(\"(text|image|audio)\", \"(text|image|audio)\"", line)
              or re.search(r"STAGED_MODALITIES|MODEL_TYPES|\bmodality\s*[!=]=\s*\"", line)]
    assert listed == []


def test_no_stage_depends_on_the_command_line_module() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert all("src/crosstune/cli.py" not in stage["deps"] for stage in stages.values())
    for script in sorted((REPO_ROOT / "stages").glob("*.py")):
        assert "crosstune.cli" not in script.read_text(encoding="utf-8"), script.name
