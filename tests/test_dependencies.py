"""dvc.yaml's deps and params cannot drift from the code: each stage runs on tiny data under a probe that
records the crosstune modules it imported and the params keys it read, and every one must be covered by
that stage's declared deps (a file, or a folder above it) and params (a section, or that key).

Branches a scenario does not take are covered by folder-level deps: text and images, the frozen-prefix
cache, selection by score, text augmentation, a source domain with DANN, the guard on, recordings, tagged
sentences (the scratch model and the CRF baseline in the guard), transcripts and boxes (a detector's trained
probe and scratch model).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    DETECTION_PARAMS,
    REPO_ROOT,
    make_box_images,
    make_texts,
    write_audio_folder,
    write_boxes,
    write_digit_strings,
    write_image_folder,
    write_params,
    write_table,
    write_tiny_whisper,
)

PROBE = REPO_ROOT / "tests" / "helpers" / "stage_probe.py"
PACKAGE = REPO_ROOT / "src" / "crosstune"

TEXT_SCENARIO = {
    "backbone": {"select": "score", "candidates": ["tiny-bert@1", "tiny-bert"], "selection_samples": 20},
    "freeze": {"depth": 1},
    "finetune": {"epochs": 1},
    "text_augment": {"copies": 1},
    "evaluate": {"guard": "report"},
}
IMAGE_SCENARIO = {
    "data": {"train": "data/images/train", "test": "data/images/test", "source": "data/images/source"},
    "prepare": {"validation_fraction": 0.25, "target_labelled": 0.5},
    "backbone": {"name": "tiny-cnn", "weights": "none"},
    "freeze": {"depth": 1},
    "finetune": {"epochs": 1, "lr": 0.01, "class_weights": "none", "adaptation": "dann"},
    # scratch: always, so the scratch stage trains here whatever the evidence (text and audio go through auto)
    "evaluate": {"baselines": ["majority", "pixels_logreg"], "guard": "fallback", "scratch": "always"},
}
DETECTION_SCENARIO = DETECTION_PARAMS  # the cache, the trained probe, the scratch detector, the drawing
AUDIO_SCENARIO = {
    "data": {"train": "data/audio/train", "test": "data/audio/test"},
    "prepare": {"validation_fraction": 0.25},
    "backbone": {"select": "score", "candidates": ["tiny-audio-cnn"], "weights": "none", "selection_samples": 20},
    "freeze": {"depth": 1},
    "finetune": {"epochs": 1, "lr": 0.01, "class_weights": "none"},
    "evaluate": {"baselines": ["majority", "mfcc_logreg"], "guard": "report"},
}

NER_SCENARIO = {
    "data": {"train": "data/ner/train.tsv", "test": "data/ner/test.tsv"},
    "prepare": {"task": "token_classification", "validation_fraction": 0.2},
    "backbone": {"max_length": 24},
    "freeze": {"depth": 1},
    "finetune": {"epochs": 1, "loss": "token_cross_entropy", "select_metric": "entity_f1", "class_weights": "none",
                 "max_length": 24},
    "evaluate": {"baselines": ["crf", "dictionary"], "guard": "fallback", "scratch": "auto"},
}
TRANSCRIPTION_SCENARIO = {
    "data": {"train": "data/digits/train.csv", "test": "data/digits/test.csv"},
    "prepare": {"task": "transcription", "label_column": "transcript", "validation_fraction": 0.25},
    "backbone": {"name": "models/tiny-whisper", "weights": "DEFAULT"},
    "freeze": {"depth": "all"},
    "finetune": {"epochs": 1, "loss": "token_cross_entropy", "select_metric": "wer", "class_weights": "none",
                 "batch_size": 4},
    "evaluate": {"baselines": [], "guard": "fallback"},
}


def is_code_free(path: Path) -> bool:
    """A module holding nothing but its docstring (the concept folders' ``__init__``): importing it runs
    nothing, so it need not be a dependency."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def uncovered_modules(module_files: list[Path], deps: list[str]) -> list[str]:
    """The imported crosstune files (relative to the repo) that no declared dep covers."""
    declared = [Path(dep) for dep in deps]
    missing = []
    for file in module_files:
        relative = file.resolve().relative_to(REPO_ROOT)
        if is_code_free(file):
            continue
        if not any(relative == dep or dep in relative.parents for dep in declared):
            missing.append(str(relative))
    return sorted(missing)


def undeclared_params(read: dict[str, list[str]], declared: list[str]) -> list[str]:
    """The ``section.key`` params a stage read that its dvc.yaml ``params`` do not list."""
    return sorted(f"{section}.{key}" for section, keys in read.items() for key in keys
                  if section not in declared and f"{section}.{key}" not in declared)


def _resolve(text: str, params: dict) -> str:
    """DVC's ``${section.key}`` templating, enough for dvc.yaml's cmd and deps."""
    def value(match: re.Match) -> str:
        section, key = match.group(1).split(".", 1)
        return str(params[section][key])

    return re.sub(r"\$\{([\w.]+)\}", value, text)


def _probe_pipeline(root: Path) -> dict[str, dict]:
    """Run every stage of dvc.yaml in order under the probe; return each stage's record and entry."""
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    results = {}
    for name, stage in stages.items():
        command = shlex.split(_resolve(" ".join(stage["cmd"].split()), params))
        assert command[0] == "python", f"dvc.yaml stage {name}: cmd should start with python"
        record = root / f"probe-{name}.json"
        done = subprocess.run([sys.executable, str(PROBE), str(record), *command[1:]], cwd=root,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"stage {name} failed under the probe:\n{done.stderr[-3000:]}"
        results[name] = {"record": json.loads(record.read_text(encoding="utf-8")),
                         "deps": [_resolve(dep, params) for dep in stage.get("deps", [])],
                         "params": [entry for entry in stage.get("params", []) if isinstance(entry, str)]}
    return results


def _project(root: Path, scenario: dict) -> Path:
    shutil.copytree(REPO_ROOT / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    if scenario is NER_SCENARIO:
        from test_token_classification import write_ncbi_subset

        write_ncbi_subset(root / "data" / "ner", train=40, test=10)
        (root / "data" / "source").mkdir(parents=True)
    elif scenario is TRANSCRIPTION_SCENARIO:
        write_digit_strings(root / "data" / "digits", train_per_speaker=3, test_per_speaker=2)
        write_tiny_whisper(root / "models" / "tiny-whisper")
        (root / "data" / "source").mkdir(parents=True)
    elif scenario is DETECTION_SCENARIO:
        write_boxes(root / "data" / "boxes" / "train", "voc", make_box_images(16, seed=1))
        write_boxes(root / "data" / "boxes" / "test", "voc", make_box_images(6, seed=2))
        (root / "data" / "source").mkdir(parents=True)
    elif scenario is AUDIO_SCENARIO:
        write_audio_folder(root / "data" / "audio" / "train", per_class=10, seed=1)
        write_audio_folder(root / "data" / "audio" / "test", per_class=4, seed=2)
        (root / "data" / "source").mkdir(parents=True)
    elif "data" in scenario:
        write_image_folder(root / "data" / "images" / "train", per_class=12, seed=1)
        write_image_folder(root / "data" / "images" / "test", per_class=5, seed=2)
        write_image_folder(root / "data" / "images" / "source", per_class=8, seed=3, side=24)
    else:
        write_table(root / "data" / "raw" / "train.csv", make_texts(20, seed=1))
        write_table(root / "data" / "raw" / "test.csv", make_texts(6, seed=2))
        (root / "data" / "source").mkdir(parents=True)
    write_params(root / "params.yaml", scenario)
    return root


def _check(results: dict[str, dict]) -> list[str]:
    problems = []
    for name, result in results.items():
        files = [Path(path) for path in result["record"]["modules"].values()
                 if path and Path(path).resolve().is_relative_to(PACKAGE)]
        for module in uncovered_modules(files, result["deps"]):
            problems.append(f"dvc.yaml stage {name}: imports {module} but does not list it (or its folder) in deps")
        for key in undeclared_params(result["record"]["params"], result["params"]):
            problems.append(f"dvc.yaml stage {name}: reads params {key} but does not list it (or its section)")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [TEXT_SCENARIO, IMAGE_SCENARIO, AUDIO_SCENARIO, NER_SCENARIO,
                                      TRANSCRIPTION_SCENARIO, DETECTION_SCENARIO],
                         ids=["text", "image", "audio", "tagging", "transcription", "detection"])
def test_every_stage_declares_what_it_imports_and_reads(tmp_path: Path, scenario: dict) -> None:
    results = _probe_pipeline(_project(tmp_path, scenario))
    problems = _check(results)
    assert not problems, "\n".join(problems)
    # the probe saw real work: the scenario took the branches it is meant to cover
    if scenario is TEXT_SCENARIO:
        assert "crosstune.prefix_cache.store" in results["cache"]["record"]["modules"]
        assert "crosstune.selection.candidates" in results["backbone"]["record"]["modules"]
        assert "crosstune.evaluation.baselines" in results["scratch"]["record"]["modules"]  # evaluate.scratch: auto
    elif scenario is IMAGE_SCENARIO:
        assert "crosstune.methods.adaptation" in results["finetune"]["record"]["modules"]
    elif scenario is TRANSCRIPTION_SCENARIO:
        assert "crosstune.transcription.encoding" in results["backbone"]["record"]["modules"]
        assert "crosstune.prefix_cache.store" in results["cache"]["record"]["modules"]
        assert "crosstune.reporting.aligned_transcripts" in results["evaluate"]["record"]["modules"]
        return  # no scratch model: the guard compares with the zero-shot recogniser (the probe stage)
    elif scenario is DETECTION_SCENARIO:
        assert "crosstune.detection.formats" in results["prepare"]["record"]["modules"]
        assert "crosstune.prefix_cache.store" in results["cache"]["record"]["modules"]
        assert "crosstune.training.loop" in results["probe"]["record"]["modules"]
        assert "crosstune.detection.evaluation" in results["evaluate"]["record"]["modules"]
    elif scenario is NER_SCENARIO:
        assert "crosstune.data.tagging" in results["prepare"]["record"]["modules"]
        assert "crosstune.evaluation.tagging_baselines" in results["scratch"]["record"]["modules"]
        assert "crosstune.reporting.tagged_sentences" in results["evaluate"]["record"]["modules"]
    else:
        assert "crosstune.prefix_cache.store" in results["cache"]["record"]["modules"]
        assert "crosstune.backbones.audio_features" in results["evaluate"]["record"]["modules"]
    assert "crosstune.training.loop" in results["scratch"]["record"]["modules"]
    assert "finetune" in results["scratch"]["record"]["params"]


def test_a_missing_dependency_is_reported() -> None:
    files = [PACKAGE / "training" / "loop.py", PACKAGE / "config.py", PACKAGE / "data" / "__init__.py"]
    assert uncovered_modules(files, ["src/crosstune/training", "stages/finetune.py"]) == ["src/crosstune/config.py"]
    assert uncovered_modules(files, ["src/crosstune/training", "src/crosstune/config.py"]) == []
    read = {"finetune": ["lr", "max_length"], "base": ["seed"]}
    assert undeclared_params(read, ["base", "finetune.lr"]) == ["finetune.max_length"]
    assert undeclared_params(read, ["base", "finetune"]) == []


def test_the_metrics_files_named_in_code_are_the_ones_dvc_yaml_writes() -> None:
    """`crosstune report`, the rerun check and the experiment commands read the metrics files by the names in
    :mod:`crosstune.pipeline.metrics_files`: dvc.yaml writes exactly those, and declares only the summary."""
    from crosstune.pipeline import metrics_files

    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))

    def paths(entries: list) -> set[str]:
        return {next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries}

    declared = set().union(*(paths(stage.get("metrics", [])) for stage in pipeline["stages"].values()),
                           paths(pipeline.get("metrics", [])))
    assert declared == {metrics_files.SUMMARY}
    outs = set().union(*(paths(stage.get("outs", [])) for stage in pipeline["stages"].values()))
    written = {path for path in outs if path.startswith("metrics/") and path.endswith(".json")}
    directories = {path for path in outs if path.startswith("metrics/") and "." not in Path(path).name}
    inside = {path for path in metrics_files.FILES if any(path.startswith(f"{folder}/") for folder in directories)}
    assert inside == {metrics_files.TRAINING}  # dvclive's summary, in finetune's output folder
    assert written | inside == set(metrics_files.FILES)
