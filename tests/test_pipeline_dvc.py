"""End to end: real `dvc repro` of the stages in a temporary git repo, with the tiny backbone.

Checks the granularity users rely on: a no-op second run, a learning-rate change rerunning only
finetune and evaluate, a freeze-depth change rerunning from attach-head and rebuilding the
frozen-prefix cache, `dvc params/metrics diff` after a commit, `dvc exp run -S` (on the cache), and
identical metrics when the same params run twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from conftest import (
    DETECTION_PARAMS,
    REPO_ROOT,
    documented_reruns,
    make_box_images,
    make_texts,
    run_chromium,
    write_audio_folder,
    write_boxes,
    write_digit_strings,
    write_image_folder,
    write_params,
    write_table,
    write_tiny_whisper,
)

pytestmark = pytest.mark.slow
IMAGE_PARAMS = {
    "data": {"train": "data/images/train", "test": "data/images/test"},
    "prepare": {"validation_fraction": 0.25},
    "backbone": {"name": "tiny-cnn", "weights": "none"},
    "freeze": {"depth": 1},
    "finetune": {"epochs": 2, "lr": 0.01, "class_weights": "none"},
    "augment": {"crop_scale_min": 0.8},
    "evaluate": {"baselines": ["majority", "pixels_logreg"], "guard": "report"},
}
AUDIO_PARAMS = {
    "data": {"train": "data/audio/train", "test": "data/audio/test"},
    "prepare": {"validation_fraction": 0.25},
    "backbone": {"name": "tiny-audio-cnn", "weights": "none", "clip_seconds": 0.5},
    "freeze": {"depth": 1},
    "finetune": {"epochs": 3, "lr": 0.01, "class_weights": "none"},
    "evaluate": {"baselines": ["majority", "mfcc_logreg"], "guard": "report"},
}
NER_PARAMS = {  # the whole tiny model trains, tags weighted against O so that it does tag entities
    "data": {"train": "data/ner/train.tsv", "test": "data/ner/test.tsv"},
    "prepare": {"task": "token_classification", "validation_fraction": 0.2},
    "backbone": {"max_length": 24},  # short windows: sentences are cut in several
    "head": {"type": "hf", "pooling": "cls"},
    "freeze": {"depth": 0},
    "finetune": {"epochs": 4, "lr": 0.003, "loss": "token_cross_entropy", "select_metric": "entity_f1",
                 "class_weights": "balanced", "max_length": 24},
    "evaluate": {"baselines": ["crf", "dictionary"], "guard": "report"},
}
TRANSCRIPTION_PARAMS = {  # the tiny random Whisper's decoder trains on the cached encoder; the zero-shot guard
    "data": {"train": "data/digits/train.csv", "test": "data/digits/test.csv"},
    "prepare": {"task": "transcription", "label_column": "transcript", "validation_fraction": 0.25},
    "backbone": {"name": "pretrained/tiny-whisper", "weights": "DEFAULT"},
    "freeze": {"depth": "all"},
    "finetune": {"epochs": 2, "lr": 0.003, "batch_size": 4, "loss": "token_cross_entropy", "select_metric": "wer",
                 "class_weights": "none"},
    "evaluate": {"baselines": [], "guard": "fallback"},
}
DETECTION_TWO_EPOCHS = {**DETECTION_PARAMS, "finetune": {**DETECTION_PARAMS["finetune"], "epochs": 2},
                        "probe": {**DETECTION_PARAMS["probe"], "epochs": 2}}
ALL_STAGES = {"prepare", "backbone", "attach_head", "cache", "probe", "finetune", "scratch", "evaluate"}
TEXT_PARAMS = {"finetune": {"epochs": 2}, "evaluate": {"guard": "report"}}


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
                "GIT_AUTHOR_NAME": "crosstune-test", "GIT_AUTHOR_EMAIL": "test@crosstune.invalid",
                "GIT_COMMITTER_NAME": "crosstune-test", "GIT_COMMITTER_EMAIL": "test@crosstune.invalid"})
    return env


class Repo:
    """A throwaway copy of the pipeline with tiny data and the tiny random backbone."""

    def __init__(self, root: Path, images: bool = False, audio: bool = False, ner: bool = False,
                 transcription: bool = False, boxes: bool = False) -> None:
        self.root = root
        self.env = _environment()
        shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
        shutil.copytree(REPO_ROOT / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        if images:
            write_image_folder(root / "data" / "images" / "train", per_class=12, seed=1)
            write_image_folder(root / "data" / "images" / "test", per_class=5, seed=2)
        elif audio:
            write_audio_folder(root / "data" / "audio" / "train", per_class=12, seed=1)
            write_audio_folder(root / "data" / "audio" / "test", per_class=5, seed=2)
        elif ner:
            from test_token_classification import write_ncbi_subset

            write_ncbi_subset(root / "data" / "ner", train=150, test=40)
        elif transcription:
            write_digit_strings(root / "data" / "digits", train_per_speaker=4, test_per_speaker=3)
            write_tiny_whisper(root / "pretrained" / "tiny-whisper")
        elif boxes:
            write_boxes(root / "data" / "boxes" / "train", "voc", make_box_images(24, seed=1))
            write_boxes(root / "data" / "boxes" / "test", "voc", make_box_images(8, seed=2))
        else:
            write_table(root / "data" / "raw" / "train.csv", make_texts(30, seed=1))
            write_table(root / "data" / "raw" / "test.csv", make_texts(10, seed=2))
        self.base_params = IMAGE_PARAMS if images else AUDIO_PARAMS if audio else NER_PARAMS if ner else \
            TRANSCRIPTION_PARAMS if transcription else DETECTION_TWO_EPOCHS if boxes else TEXT_PARAMS
        write_params(root / "params.yaml", self.base_params)
        (root / ".gitignore").write_text((REPO_ROOT / ".gitignore").read_text(encoding="utf-8"), encoding="utf-8")
        (root / "data" / "source").mkdir(parents=True, exist_ok=True)
        (root / "data" / "source" / "README.md").write_text("optional source sample\n", encoding="utf-8")
        self.git("init", "-q")
        self.dvc("init", "-q")
        self.dvc("config", "core.analytics", "false")
        # the project's offline page for `dvc plots show` (.dvc/config plots.html_template)
        shutil.copy(REPO_ROOT / ".dvc" / "plots_template.html", root / ".dvc" / "plots_template.html")
        self.dvc("config", "plots.html_template", "plots_template.html")
        self.commit("pipeline")

    def baseline(self, overrides: dict | None = None) -> set[str]:
        """Bring the repo to its scenario's starting point, whatever ran before: the base params (plus
        ``overrides``), outputs reproduced for them (from DVC's run-cache when they ran before) and
        committed. Every test starts here, so any ``pytest -k`` selection passes on its own."""
        params = {section: dict(values) for section, values in self.base_params.items()}
        for section, values in (overrides or {}).items():
            params.setdefault(section, {}).update(values)
        if (self.root / "dvc.lock").is_file():
            self.git("checkout", "-q", "--", ".")
        write_params(self.root / "params.yaml", params)
        ran = self.repro()
        if self.git("status", "--porcelain"):
            self.commit("baseline")
        return ran

    def run(self, *command: str) -> str:
        result = subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    def git(self, *args: str) -> str:
        return self.run("git", *args)

    def dvc(self, *args: str) -> str:
        return self.run(str(Path(sys.executable).parent / "dvc"), *args)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def repro(self, *args: str) -> set[str]:
        """Run `dvc repro` and return the names of the stages it ran or restored from the run-cache."""
        output = self.dvc("repro", *args)
        # a stage whose deps changed either runs or, when it ran with these deps before, comes back from
        # DVC's run-cache: both count as "invalidated by the change"
        return set(re.findall(r"Running stage '([\w-]+)'", output)) | \
            set(re.findall(r"Stage '([\w-]+)' is cached - skipping run", output))

    def set_param(self, section: str, key: str, value: object) -> None:
        params = yaml.safe_load((self.root / "params.yaml").read_text(encoding="utf-8"))
        params[section][key] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")

    def metrics(self) -> dict:
        return json.loads((self.root / "metrics" / "eval.json").read_text(encoding="utf-8"))

    def locked_outs(self) -> dict[str, str]:
        """Every stage output's md5 as dvc.lock records it."""
        stages = yaml.safe_load((self.root / "dvc.lock").read_text(encoding="utf-8"))["stages"]
        return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}

    def shim_env(self, **variables: str) -> dict[str, str]:
        """The environment with tests/helpers/python_shim first on PATH: the `python` dvc runs stages with then
        injects the faults ``variables`` ask for (kill_mid_write.py, kill_at_step.py)."""
        shim = REPO_ROOT / "tests" / "helpers" / "python_shim"
        return {**self.env, "PATH": f"{shim}{os.pathsep}{self.env['PATH']}", "CROSSTUNE_TEST_PYTHON": sys.executable,
                **variables}

    def leftovers(self) -> list[str]:
        """Temporary siblings of outputs (``.NAME.*.tmp``) anywhere in the repository but DVC's own folder."""
        return sorted(str(path.relative_to(self.root)) for path in self.root.rglob(".*.tmp")
                      if ".dvc" not in path.relative_to(self.root).parts)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("pipeline"))


def test_full_run_then_no_op(repo: Repo) -> None:
    repo.baseline()
    assert set(yaml.safe_load((repo.root / "dvc.lock").read_text())["stages"]) == ALL_STAGES
    for path in ("models/finetuned/model.safetensors", "models/finetuned/config.json", "metrics/eval.json",
                 "metrics/predictions.csv", "metrics/finetune/metrics.json", "metrics/freeze.json", "dvc.lock",
                 "models/scratch/model.safetensors"):
        assert (repo.root / path).is_file(), path
    metrics = repo.metrics()
    assert metrics["scratch_model"] == "trained"  # the tiny model validates below TF-IDF: the answer is open
    assert metrics["transfer_gain"] == pytest.approx(metrics["f1_macro"] - metrics["scratch_f1_macro"], abs=2e-6)
    assert repo.repro() == documented_reruns()["nothing"] == set()
    # the command line is no stage's dependency: rewording `crosstune tune`'s help reruns nothing
    cli = repo.root / "src" / "crosstune" / "cli.py"
    reworded = cli.read_text(encoding="utf-8").replace('help="trials this worker runs',
                                                       'help="trials run by this worker')
    cli.write_text(reworded, encoding="utf-8")
    assert "trials run by this worker" in cli.read_text(encoding="utf-8")
    assert "up to date" in repo.dvc("status")
    repo.git("checkout", "-q", "--", "src/crosstune/cli.py")


def test_a_rerun_that_moved_a_metric_is_said_in_words(repo: Repo) -> None:
    """`crosstune compare-committed` (the end of `make repro`): reproduced, or which test metric moved, by how much,
    against the measured seed spread."""
    repo.baseline()
    assert repo.run(sys.executable, "-m", "crosstune", "compare-committed").startswith("Reproduced: dvc.lock")
    metrics = repo.metrics()
    moved = {**metrics, "f1_macro": round(metrics["f1_macro"] - 0.01, 6),
             "accuracy": round(metrics["accuracy"] + 0.1, 6)}
    (repo.root / "metrics" / "eval.json").write_text(json.dumps(moved, indent=2) + "\n", encoding="utf-8")
    said = repo.run(sys.executable, "-m", "crosstune", "compare-committed")
    repo.git("checkout", "-q", "--", "metrics")
    assert "The rerun differs from the committed results at HEAD (1 files: metrics/eval.json)" in said
    assert re.search(r"test macro-F1 [\d.]+ -> [\d.]+ \(-0\.0100\); within the seed spread of macro-F1", said), said
    assert re.search(r"test accuracy [\d.]+ -> [\d.]+ \(\+0\.1000\)\n", said), said


def test_exported_model_card_and_round_trip(repo: Repo) -> None:
    import pandas as pd

    import crosstune

    repo.baseline()
    repo.run(str(Path(sys.executable).parent / "crosstune"), "export", "--out", "handover/model")
    export = repo.root / "handover" / "model"
    card = (export / "README.md").read_text(encoding="utf-8")
    head = repo.git("rev-parse", "--short", "HEAD").strip()
    outs = yaml.safe_load((repo.root / "dvc.lock").read_text())["stages"]["finetune"]["outs"]
    locked = next(out for out in outs if out["path"] == "models/finetuned")
    for expected in ("## Test metrics", "| f1_macro |", "baseline_tfidf_logreg_f1_macro", "tiny-bert",
                     "| finetune.lr | 0.003", "| train_size |", f"git revision {head};", locked["md5"]):
        assert expected in card, expected
    predictions = pd.read_csv(repo.root / "metrics" / "predictions.csv", keep_default_na=False)
    loaded = crosstune.load(str(export)).predict(predictions["text"].tolist())
    assert [row["label"] for row in loaded] == predictions["predicted"].tolist()
    # predictions.csv keeps 6 significant digits (metrics files are written at a fixed precision)
    assert [row["score"] for row in loaded] == pytest.approx(predictions["confidence"].tolist(), rel=1e-5)
    shutil.rmtree(repo.root / "handover")


def test_learning_rate_reruns_only_what_trains_and_evaluate(repo: Repo) -> None:
    repo.baseline()
    repo.set_param("finetune", "lr", 0.001)
    assert repo.repro() == documented_reruns()["finetune.lr"]  # the guard's scratch model trains with it
    repo.commit("lower lr")
    params_diff = repo.dvc("params", "diff", "HEAD~1")
    assert re.search(r"finetune\.lr\s+0\.003\s+0\.001", params_diff), params_diff
    metrics_diff = repo.dvc("metrics", "diff", "HEAD~1", "--all")  # the declared headline
    assert "metrics/summary.json" in metrics_diff and "f1_macro" in metrics_diff, metrics_diff
    assert "metrics/eval.json" not in metrics_diff and max(map(len, metrics_diff.splitlines())) <= 100, metrics_diff
    assert max(map(len, repo.dvc("metrics", "show").splitlines())) <= 100  # one screen wide
    details = repo.dvc("metrics", "diff", "HEAD~1", "--all", "--targets", "metrics/eval.json")
    assert "baseline_majority_f1_macro" in details, details


def test_freeze_depth_reruns_from_attach_head_and_rebuilds_the_cache(repo: Repo) -> None:
    repo.baseline()
    assert json.loads((repo.root / "data" / "features" / "meta.json").read_text())["cached"] is False
    repo.set_param("freeze", "depth", 1)
    assert repo.repro() == documented_reruns()["freeze.depth"]
    freeze = json.loads((repo.root / "metrics" / "freeze.json").read_text())
    assert freeze["frozen_blocks"] == 1 and freeze["frozen_parameters"] > 0
    meta = json.loads((repo.root / "data" / "features" / "meta.json").read_text())
    assert meta["cached"] is True and meta["level"] == 1
    assert (repo.root / "data" / "features" / "train.safetensors").is_file()
    repo.commit("freeze one block")


def test_report_compares_revisions_and_renders_offline(repo: Repo, tmp_path: Path) -> None:
    repo.baseline()
    repo.set_param("finetune", "lr", 0.001)
    repo.repro()
    repo.commit("lower lr")
    repo.run(str(Path(sys.executable).parent / "crosstune"), "report", "--compare", "HEAD~1", "--out", "report.html")
    page = (repo.root / "report.html").read_text(encoding="utf-8")
    assert "compared with HEAD~1" in page and "finetune.lr" in page
    assert "<h3>Test split <code>metrics/eval.json</code></h3>" in page and "macro-F1 <code>f1_macro</code>" in page
    assert not re.search(r"<script[^>]+src=", page), "the report must not load scripts from anywhere"
    # one view of the mistakes (the table, not the picture of it), the per-class scores once, a text run's params
    assert "<h2>Mistakes</h2>" in page and "<p>metrics/misclassified.png</p>" not in page and 'src="static/' not in page
    tables = page[page.index("<h2>Metrics</h2>"):]
    assert "<h2>Per class</h2>" in page and "<code>positive_recall</code>" not in tables
    params = tables[tables.index("<h2>Params</h2>"):]
    assert "augment.crop_scale_min" not in params.split("Left out")[0] and "prepare.text_column" in params
    assert "Left out: " in params and "backbone.clip_seconds" in params.split("Left out")[1]
    url = (repo.root / "report.html").as_uri()
    dom = run_chromium(tmp_path / "profile", "--dump-dom", url)
    rendered = re.findall(r'<canvas width="(\d+)" height="(\d+)" class="marks"', dom)
    assert len(rendered) >= 6, f"expected 6 rendered charts (5 curves + confusion matrix), found {len(rendered)}"
    assert all(int(width) > 100 and int(height) > 100 for width, height in rendered)
    screenshot = tmp_path / "report.png"
    run_chromium(tmp_path / "profile", "--window-size=1280,1600", f"--screenshot={screenshot}", url)
    from PIL import Image

    image = Image.open(screenshot).convert("RGB")
    charts = image.crop((0, 250, image.width, image.height))  # below the title: the plots area
    assert len(charts.getcolors(maxcolors=1 << 20) or []) > 50, "the chart area is blank"
    # plain `dvc plots show` renders offline too: its page loads the vendored vega by a relative path
    assert "vega-5.33.1.min.js" in (REPO_ROOT / ".dvc" / "plots_template.html").read_text(encoding="utf-8")
    repo.dvc("plots", "show")
    shown = run_chromium(tmp_path / "profile", "--dump-dom", (repo.root / "dvc_plots" / "index.html").as_uri())
    assert len(re.findall(r'<canvas width="\d{3,}" height="\d{3,}" class="marks"', shown)) >= 6


def test_same_params_give_identical_metrics(repo: Repo) -> None:
    repo.baseline()
    before = repo.metrics()
    live_before = (repo.root / "metrics" / "finetune" / "metrics.json").read_text()
    assert repo.repro("--force", "--downstream", "finetune") == {"finetune", "scratch", "evaluate"}
    assert repo.metrics() == before
    assert (repo.root / "metrics" / "finetune" / "metrics.json").read_text() == live_before
    assert repo.git("status", "--porcelain", "--", "metrics", "dvc.lock") == ""


def test_example_runs_as_a_saved_experiment_and_leaves_the_workspace_at_the_commit(repo: Repo) -> None:
    """`crosstune example` (what `make repro EXAMPLE=...` runs): `dvc exp run -S` reruns only what reads the
    changed key, prints the experiment's test metrics, keeps it as an experiment, and puts the workspace back."""
    repo.baseline()
    model_before = (repo.root / "models" / "finetuned" / "model.safetensors").read_bytes()
    (repo.root / "lr.yaml").write_text("finetune:\n  lr: 0.002\n", encoding="utf-8")
    repo.commit("a preset")
    output = repo.run(sys.executable, "-m", "crosstune", "example", "lr.yaml")
    ran = set(re.findall(r"Running stage '([\w-]+)'", output)) | \
        set(re.findall(r"Stage '([\w-]+)' is cached - skipping run", output))
    assert ran == {"finetune", "scratch", "evaluate"}
    name = re.search(r"Saved as DVC experiment (lr-\d{8}-\d{6})", output).group(1)
    assert re.search(r"^  accuracy +\d\.\d{4}$", output, re.MULTILINE)
    assert repo.git("status", "--porcelain") == ""
    assert "up to date" in repo.dvc("status")
    assert (repo.root / "models" / "finetuned" / "model.safetensors").read_bytes() == model_before
    assert _experiments_from_dvc(repo)[name][0]["finetune"]["lr"] == 0.002
    repo.git("rm", "-q", "lr.yaml")
    repo.commit("no preset")


def test_bad_param_fails_clearly_and_nothing_is_lost(repo: Repo) -> None:
    repo.baseline()
    assert "up to date" in repo.dvc("status")
    model_before = (repo.root / "models" / "finetuned" / "model.safetensors").read_bytes()
    repo.set_param("finetune", "optimizer", "adamx")
    result = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo.root, env=repo.env,
                            capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "finetune.optimizer: unknown optimizer 'adamx'" in output and "'adamw'" in output
    assert "Traceback" not in output
    # dvc clears a stage's outputs before running it; the committed ones come back from git and the dvc cache.
    repo.git("checkout", "-q", "--", "params.yaml", "metrics")
    repo.dvc("checkout", "--force")
    assert "up to date" in repo.dvc("status")
    assert (repo.root / "models" / "finetuned" / "model.safetensors").read_bytes() == model_before


def test_no_separate_test_file_holds_out_test_fraction_end_to_end(repo: Repo) -> None:
    """`data.test` set to `data.train`'s path: no test file; prepare holds out `prepare.test_fraction` of the
    training table, stratified and apart from validation, and the whole pipeline runs on it without dvc.yaml
    edited."""
    import pandas as pd

    repo.baseline({"data": {"train": "data/raw/train.csv", "test": "data/raw/train.csv"},
                   "prepare": {"test_fraction": 0.2}})
    prepared = repo.root / "data" / "prepared"
    splits = {name: pd.read_csv(prepared / f"{name}.csv", keep_default_na=False)
              for name in ("train", "validation", "test")}
    total = sum(len(frame) for frame in splits.values())  # the training table, less duplicates dropped
    assert len(splits["test"]) == pytest.approx(0.2 * total, abs=1)
    assert set(splits["test"]["text"]).isdisjoint(splits["train"]["text"])
    assert set(splits["test"]["label"]) == set(splits["train"]["label"])  # stratified: every class in both
    assert repo.metrics()["f1_macro"] >= 0 and (repo.root / "metrics" / "predictions.csv").is_file()
    assert len(pd.read_csv(repo.root / "metrics" / "predictions.csv")) == len(splits["test"])
    assert (repo.root / "dvc.yaml").read_bytes() == (REPO_ROOT / "dvc.yaml").read_bytes()


def test_dvc_repro_resumes_a_killed_finetune(repo: Repo) -> None:
    """kill -9 in the middle of epoch 2, `dvc repro` again: it continues from epoch 1 and ends where an
    uninterrupted run (forced afterwards, from scratch) ends. The guard is off: only finetune trains."""
    repo.baseline({"evaluate": {"guard": "off"}})
    repo.set_param("finetune", "epochs", 3)
    # dvc runs `python stages/finetune.py ...`: the shim first on PATH runs it under a SIGKILL-at-step callback
    env = repo.shim_env(CROSSTUNE_TEST_KILL_AT_STEP="13")  # 9 optimizer steps an epoch
    killed = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo.root, env=env,
                            capture_output=True, text=True, check=False)
    assert killed.returncode != 0
    state = json.loads((repo.root / "checkpoints" / "finetune" / "state.json").read_text())
    assert state["epoch"] == 1
    output = repo.dvc("repro")
    assert "resuming from checkpoints/finetune after epoch 1" in output
    resumed = repo.metrics()
    assert repo.repro("--force", "--downstream", "finetune") == {"finetune", "scratch", "evaluate"}
    assert repo.metrics() == resumed


# Where each stage is killed: inside its N-th atomic write, when that output is whole beside its place and every
# earlier output of the stage is written (a stage of one output: inside that one).
KILL_POINTS = {"prepare": 1, "backbone": 2, "attach_head": 2, "cache": 1, "probe": 2, "finetune": 1, "scratch": 1,
               "evaluate": 2}


def test_kill_9_in_the_middle_of_every_stage_then_repro_ends_as_an_uninterrupted_run(repo: Repo) -> None:
    """Each stage killed (SIGKILL) in the middle of writing its outputs: the next `dvc repro` reruns it, or restores
    it from DVC's run-cache (it ran with these deps before), and ends with every output equal to the uninterrupted
    run's and `git status` clean. What a killed writer left beside its output (a hidden ``.NAME.*.tmp``, never inside
    an output) is ignored by git and removed by the stage's next real write: a forced rerun at the end leaves none."""
    repo.baseline()
    reference = repo.locked_outs()
    dvc = str(Path(sys.executable).parent / "dvc")
    for stage, write in KILL_POINTS.items():
        env = repo.shim_env(CROSSTUNE_TEST_KILL_STAGE=f"stages/{stage}.py", CROSSTUNE_TEST_KILL_WRITE=str(write))
        killed = subprocess.run([dvc, "repro", "--force", "--single-item", stage], cwd=repo.root, env=env,
                                capture_output=True, text=True, check=False)
        output = killed.stdout + killed.stderr
        assert killed.returncode != 0 and "exited with 97" not in output, f"{stage} was not killed:\n{output}"
        assert repo.leftovers(), f"{stage}: the kill left no temporary sibling (was it killed mid-write?)"
        ran = repo.repro()
        assert stage in ran, f"{stage} did not rerun after its kill"
        assert repo.locked_outs() == reference, f"{stage}: outputs differ from the uninterrupted run"
        assert repo.git("status", "--porcelain", "--ignored=no") == "", stage
        for leftover in repo.leftovers():
            assert repo.git("check-ignore", leftover).strip() == leftover
            assert not any(leftover.startswith(f"{out}/") for out in reference), f"{leftover} is inside an output"
    assert ALL_STAGES <= repo.repro("--force", "--no-run-cache")
    assert repo.leftovers() == [], f"the stages' own writes did not remove {repo.leftovers()}"
    assert repo.locked_outs() == reference


def test_handoff_through_a_dvc_remote_reproduces_nothing_and_predicts_the_same(repo: Repo, tmp_path: Path) -> None:
    """The handoff the README's recipe gives: commit and `dvc push` to a remote (a local folder here, S3 or SSH for a
    team); a teammate's clone `dvc pull`s; `dvc status` is clean, `dvc repro` runs nothing, `dvc metrics diff` is
    empty and `crosstune predict` labels new texts exactly as the original did."""
    import pandas as pd

    repo.baseline()
    remote = tmp_path / "team-remote"
    repo.dvc("remote", "add", "--default", "team", str(remote))
    repo.commit("a DVC remote for the team")
    try:
        repo.dvc("push")
        teammate = tmp_path / "teammate"
        repo.run("git", "clone", "--quiet", str(repo.root), str(teammate))
        clone = Repo.__new__(Repo)
        clone.root, clone.env = teammate, repo.env
        clone.dvc("pull")
        assert "up to date" in clone.dvc("status")
        assert clone.repro() == set()
        assert json.loads(clone.dvc("metrics", "diff", "--json") or "{}") == {}
        pd.DataFrame({"text": ["the drug helped a lot", "terrible nausea and headache", "okay I guess"]}).to_csv(
            tmp_path / "new.csv", index=False)
        for where in (repo, clone):
            where.run(sys.executable, "-m", "crosstune", "predict", "--model", "models/finetuned", "--input",
                      str(tmp_path / "new.csv"), "--output", str(tmp_path / f"{where.root.name}.csv"))
        assert (tmp_path / f"{repo.root.name}.csv").read_bytes() == (tmp_path / "teammate.csv").read_bytes()
    finally:
        repo.dvc("remote", "remove", "team")
        repo.commit("no remote")


def test_two_experiments_at_once_wait_or_fail_with_dvcs_lock_and_corrupt_nothing(repo: Repo) -> None:
    """Two experiments started at the same moment in one repository. With ``--temp`` (the README's way to run them
    side by side; `crosstune sweep` and `tune` queue them) both run, each in its own copy, both are recorded whole,
    and the workspace is untouched. Two plain `dvc exp run` in the workspace: the second fails with DVC's lock
    message and nothing is corrupted: every experiment DVC recorded is whole and holds its own params, the workspace
    comes back with `git checkout` + `dvc checkout`, and the next experiment runs. (DVC 3.67 may also fail the
    first: the second's clean-up removes the EXEC_BASELINE ref the first commits against; see the README.)"""
    repo.baseline()
    dvc = str(Path(sys.executable).parent / "dvc")

    def at_once(*options: str, rates: tuple[str, str]) -> tuple[list[int], list[str]]:
        runs = [subprocess.Popen([dvc, "exp", "run", *options, "-S", f"finetune.lr={lr}"], cwd=repo.root,
                                 env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for lr in rates]
        outputs = [run.communicate(timeout=900)[0] for run in runs]
        return [run.returncode for run in runs], outputs

    def recorded(rates: tuple[str, str]) -> list[dict]:
        found = [(params["finetune"]["lr"], metrics) for params, metrics in _experiments_from_dvc(repo).values()
                 if str(params["finetune"]["lr"]) in rates]
        assert all("f1_macro" in metrics["metrics/eval.json"] for _, metrics in found)  # each one is whole
        return found

    statuses, outputs = at_once("--temp", rates=("0.002", "0.004"))
    assert statuses == [0, 0], outputs
    assert sorted(lr for lr, _ in recorded(("0.002", "0.004"))) == [0.002, 0.004]
    assert repo.git("status", "--porcelain") == "" and "up to date" in repo.dvc("status")

    statuses, outputs = at_once(rates=("0.005", "0.006"))
    assert statuses != [0, 0], "two workspace runs at once both went through"
    failed = [output for status, output in zip(statuses, outputs) if status]
    assert any(re.search(r"is busy, it is being blocked by|Unable to acquire lock", output) for output in failed), \
        outputs
    assert len(recorded(("0.005", "0.006"))) == statuses.count(0)
    repo.git("checkout", "-q", "--", ".")
    repo.dvc("checkout", "--force")
    assert "up to date" in repo.dvc("status")
    assert repo.dvc("exp", "run", "-S", "finetune.lr=0.007") and len(recorded(("0.007",))) == 1
    repo.git("checkout", "-q", "--", ".")
    repo.dvc("checkout", "--force")
    assert "up to date" in repo.dvc("status")


def _experiments_from_dvc(repo: Repo) -> dict[str, tuple[dict, dict]]:
    """name -> (params.yaml, metrics files) of HEAD's experiments, read from `dvc exp show --json` directly (the
    declared summary) and from each experiment's commit (the other metrics files)."""
    found = {}
    for baseline in json.loads(repo.dvc("exp", "show", "--json")):
        for group in baseline.get("experiments") or []:
            for revision in group["revs"]:
                data = revision["data"]
                metrics = {path: value["data"] for path, value in data["metrics"].items()}
                assert set(metrics) == {"metrics/summary.json"}, metrics
                for path in ("metrics/eval.json", "metrics/finetune/metrics.json"):
                    metrics[path] = json.loads(repo.git("show", f"{revision['rev']}:{path}"))
                found[revision["name"]] = (data["params"]["params.yaml"]["data"], metrics)
    return found


def test_sweep_queues_the_grid_as_dvc_experiments_and_ranks_them(repo: Repo) -> None:
    """`crosstune sweep` over two keys (2 x 1 values: two queued DVC experiments; the grid's product is
    test_experiments'), ranked as `dvc exp show` has them; the same sweep again runs nothing; a failing trial is
    reported with how to re-queue it."""
    repo.baseline({"evaluate": {"guard": "off"}, "finetune": {"epochs": 1}})
    sweep = [sys.executable, "-m", "crosstune", "sweep", "--timeout", "900", "finetune.lr=0.01,0.002",
             "finetune.head_lr=0.01"]
    result = subprocess.run(sweep, cwd=repo.root, env=repo.env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    experiments = _experiments_from_dvc(repo)
    assert set(experiments) >= {row[1] for row in rows}
    validation = {}
    for row in rows:
        params, metrics = experiments[row[1]]
        assert [f"finetune.lr={params['finetune']['lr']}", f"finetune.head_lr={params['finetune']['head_lr']}"] == \
            row[2:4]
        validation[row[1]] = metrics["metrics/finetune/metrics.json"]["best_validation"]["f1_macro"]
        assert float(row[4]) == pytest.approx(validation[row[1]], abs=5e-5)
        assert float(row[5]) == pytest.approx(metrics["metrics/eval.json"]["f1_macro"], abs=5e-5)
        assert metrics["metrics/summary.json"]["f1_macro"] == metrics["metrics/eval.json"]["f1_macro"]
    assert [row[1] for row in rows] == sorted(validation, key=lambda name: (-validation[name], name))
    assert len({tuple(row[2:4]) for row in rows}) == 2
    assert f"dvc exp apply {rows[0][1]}" in result.stdout

    again = subprocess.run(sweep, cwd=repo.root, env=repo.env, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "2 already done on this commit, 0 queued" in again.stderr
    assert [line.split()[:2] for line in again.stdout.splitlines() if line[:1].isdigit()] == \
        [row[:2] for row in rows]

    # the report ranks the experiments and draws their parallel coordinates, offline
    repo.run(str(Path(sys.executable).parent / "crosstune"), "report", "--out", "report.html")
    page = (repo.root / "report.html").read_text(encoding="utf-8")
    section = page[page.index("<h2>Experiments</h2>"):]
    assert [name for name in re.findall(r"<tr><td>\d+</td><td>(sweep-\w+)</td>", section)] == [row[1] for row in rows]
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        dom = run_chromium(repo.root / ".profile", "--dump-dom", (repo.root / "report.html").as_uri())
        plot = dom[dom.index('id="crosstune_experiments_parallel"'):]
        assert re.search(r'<canvas width="(\d{3,})" height="(\d{3,})" class="marks"', plot[:3000])
    (repo.root / "report.html").unlink()

    failing = subprocess.run([*sweep[:6], "finetune.lr=-1"], cwd=repo.root, env=repo.env, capture_output=True,
                             text=True, check=False)
    assert failing.returncode == 2
    assert "1 of 1 trial(s) failed" in failing.stderr and "run the same `crosstune sweep` again" in failing.stderr
    assert "dvc queue logs sweep-" in failing.stdout
    assert repo.git("status", "--porcelain", "--", "params.yaml", "dvc.lock") == ""


@pytest.fixture(scope="module")
def postgresql_url() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's package, .ci/run installs it) with an empty database on a free
    localhost port, as the README's several-machine recipe has one; skipped where no server is installed."""
    import socket
    import tempfile

    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not binaries:
        pytest.skip("no PostgreSQL server installed (.ci/run installs Debian's postgresql)")
    bindir, user = binaries[-1].parent, "postgres"
    as_user = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []  # the server refuses to run as root
    root = Path(tempfile.mkdtemp(prefix="crosstune-postgres-"))
    root.chmod(0o755)
    if as_user:
        shutil.chown(root, user)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user], check=True,
                   capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "crosstune"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/crosstune"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False,
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_tune_workers_share_one_study_of_dvc_experiments(repo: Repo, tmp_path: Path, database: str,
                                                            request: pytest.FixtureRequest) -> None:
    """Two `crosstune tune` processes on one study, in SQLite (one machine) and in PostgreSQL (the README's
    several-machine recipe, each worker on its own seed): every trial is one study entry, none lost or run twice,
    each completed one a DVC experiment holding the sampled params and the validation value the study was told."""
    import optuna

    repo.baseline({"evaluate": {"guard": "off"}, "finetune": {"epochs": 2}})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"finetune": {"lr": {"low": 1e-3, "high": 3e-2, "log": True},
                                                  "head_lr": [0.0, 0.01]}}), encoding="utf-8")
    storage = f"sqlite:///{tmp_path / 'study.db'}" if database == "sqlite" else \
        request.getfixturevalue("postgresql_url")
    study_name = f"pair-{database}"
    workers = [subprocess.Popen([sys.executable, "-m", "crosstune", "tune", str(space), "--trials", "1", "--study",
                                 study_name, "--storage", storage, "--seed", str(seed)], cwd=repo.root, env=repo.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    outputs = [worker.communicate(timeout=900) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = [trial.state.name for trial in study.trials]
    assert len(states) == 2 and set(states) <= {"COMPLETE", "PRUNED"}, states  # none lost, none twice
    assert sorted(trial.number for trial in study.trials) == [0, 1]
    completed = [trial.user_attrs["experiment"] for trial in study.trials if trial.state.name == "COMPLETE"]
    assert len(set(completed)) == len(completed)  # one experiment per trial
    experiments = _experiments_from_dvc(repo)
    for trial in study.trials:
        if trial.state.name != "COMPLETE":
            assert trial.user_attrs["experiment"] not in experiments
            continue
        params, metrics = experiments[trial.user_attrs["experiment"]]
        assert params["finetune"]["lr"] == pytest.approx(trial.params["finetune.lr"])
        assert params["finetune"]["head_lr"] == trial.params["finetune.head_lr"]
        assert metrics["metrics/finetune/metrics.json"]["best_validation"]["f1_macro"] == pytest.approx(trial.value)
        assert sorted(trial.intermediate_values) == [1, 2]
    from crosstune.experiments.tune import study_table

    table = study_table(study, repo.root).splitlines()
    assert table[0].startswith("| trial | state | validation | epochs | finetune.head_lr | finetune.lr |")
    assert len([line for line in table if re.match(r"\| \d+ \| (complete|pruned) \|", line)]) == 2
    assert repo.git("status", "--porcelain", "--", "params.yaml", "dvc.lock") == ""


@pytest.fixture(scope="module")
def image_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("images"), images=True)


def test_image_pipeline_and_augmentation_granularity(image_repo: Repo) -> None:
    import pandas as pd

    import crosstune

    image_repo.baseline()
    metrics = image_repo.metrics()
    assert {"f1_macro", "baseline_pixels_logreg_f1_macro", "red_f1"} <= set(metrics)
    assert (image_repo.root / "metrics" / "misclassified.png").stat().st_size > 1000
    image_repo.set_param("augment", "horizontal_flip", 0.5)
    # the cache stage re-decides (augmentation makes caching invalid) without loading a model
    # the probe reads no augment key, and the cache's record (not built: augmentation) did not change
    assert image_repo.repro() == {"cache", "finetune", "scratch", "evaluate"}
    assert "augment" in json.loads((image_repo.root / "data" / "features" / "meta.json").read_text())["reason"]
    predictions = pd.read_csv(image_repo.root / "metrics" / "predictions.csv")
    loaded = crosstune.load(str(image_repo.root / "models" / "finetuned"))
    labels = [row["label"] for row in loaded.predict([image_repo.root / path for path in predictions["image"]])]
    assert labels == predictions["predicted"].tolist()


def test_image_source_domain_with_dann(image_repo: Repo) -> None:
    """Pointing data.source at a labelled source domain reruns the pipeline from prepare; DANN trains on
    source + unlabelled target batches (not on the cache) and evaluate reports the domain gap."""
    image_repo.baseline()
    write_image_folder(image_repo.root / "data" / "images" / "source", per_class=10, seed=3, side=24)
    image_repo.set_param("data", "source", "data/images/source")
    image_repo.set_param("prepare", "target_labelled", 0.0)
    image_repo.set_param("finetune", "adaptation", "dann")
    # every stage reruns: attach_head too, since the per-block LogME it reads for freeze.depth: auto
    # (metrics/freeze_blocks.csv) is scored on the training sample, which the new split changes
    assert image_repo.repro() == ALL_STAGES
    summary = json.loads((image_repo.root / "data" / "prepared" / "summary.json").read_text())
    assert summary["source_size"] == 30 and summary["train_labelled"] == 0
    assert "finetune.adaptation: dann" in json.loads(
        (image_repo.root / "data" / "features" / "meta.json").read_text())["reason"]
    metrics = image_repo.metrics()
    assert 0.0 <= metrics["proxy_a_distance_before"] <= 2.0 and "proxy_a_distance_after" in metrics
    image_repo.set_param("finetune", "adaptation_weight", 0.5)
    assert image_repo.repro() == {"finetune", "scratch", "evaluate"}


@pytest.fixture(scope="module")
def audio_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("audio"), audio=True)


def test_audio_pipeline_end_to_end(audio_repo: Repo) -> None:
    """Generated tones through every stage with the tiny audio CNN: cached prefix, guard, MFCC baseline,
    spectrograms of the mistakes, a no-op second run and predictions from the saved model on the files."""
    import pandas as pd

    import crosstune

    assert audio_repo.baseline() == ALL_STAGES
    metrics = audio_repo.metrics()
    assert {"baseline_mfcc_logreg_accuracy", "baseline_majority_accuracy", "negative_transfer"} <= set(metrics)
    # evaluate.scratch: auto: the fine-tuned CNN validates at least as well as the MFCC baseline, so the guard's
    # scratch model is not trained (the text repo's run trains it: its fine-tuned model validates below TF-IDF)
    assert metrics["scratch_model"] == "skipped" and "transfer_gain" not in metrics
    assert metrics["guard_finetuned_validation_f1_macro"] >= metrics["guard_best_baseline_validation_f1_macro"]
    assert not (audio_repo.root / "models" / "scratch" / "model.safetensors").exists()
    assert metrics["baseline_mfcc_logreg_accuracy"] > 0.9  # three pitches: MFCC statistics separate them
    assert json.loads((audio_repo.root / "data" / "features" / "meta.json").read_text())["level"] == 1
    assert (audio_repo.root / "metrics" / "misclassified.png").stat().st_size > 1000
    assert audio_repo.repro() == set()
    predictions = pd.read_csv(audio_repo.root / "metrics" / "predictions.csv")
    loaded = crosstune.load(str(audio_repo.root / "models" / "finetuned"))
    labels = [row["label"] for row in loaded.predict([audio_repo.root / path for path in predictions["audio"]])]
    assert labels == predictions["predicted"].tolist()
    audio_repo.set_param("backbone", "clip_seconds", 0.3)
    assert audio_repo.repro() == ALL_STAGES - {"prepare"}


@pytest.fixture(scope="module")
def ner_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("ner"), ner=True)


def test_token_classification_end_to_end_and_the_stock_pipeline(ner_repo: Repo, tmp_path: Path) -> None:
    """Disease mentions (150 NCBI sentences) through every stage with the tiny backbone and the stock Hugging Face
    head: sentences cut into windows, CRF and dictionary baselines, the guard; `crosstune predict` on raw text gives
    the entities evaluate found, and the export loads in `transformers.pipeline("token-classification")`, which
    returns the same entities and scores. (The frozen-prefix cache for tagging: test_token_classification.)"""
    import pandas as pd
    import transformers

    import crosstune
    from crosstune.data.tagging import TaggedSentence, entity_records

    assert ner_repo.baseline() == ALL_STAGES
    metrics = ner_repo.metrics()
    assert {"entity_f1", "token_accuracy", "Disease_f1", "baseline_crf_entity_f1", "baseline_dictionary_entity_f1",
            "probe_entity_f1"} <= set(metrics)
    assert metrics["baseline_crf_entity_f1"] > 0.1 and metrics["entity_f1"] > 0.02 and metrics["test_size"] == 40
    assert json.loads((ner_repo.root / "metrics" / "backbone.json").read_text())["train_split_sentences"] > 0
    assert (ner_repo.root / "metrics" / "misclassified.png").stat().st_size > 1000
    assert ner_repo.repro() == set()
    # the report: the task's sections (per-type scores, gold and predicted entities side by side), not the
    # per-class table of labels and the picture of mistakes every other task shows
    ner_repo.run(str(Path(sys.executable).parent / "crosstune"), "report", "--out", "report.html")
    page = (ner_repo.root / "report.html").read_text(encoding="utf-8")
    (ner_repo.root / "report.html").unlink()
    per_type = page[page.index("<h2>Per class</h2>"):page.index("<h2>Mistakes</h2>")]
    assert re.search(r"<tr><td>Disease</td>(<td class=\"number\">[0-9.]+</td>){3}", per_type)
    assert "<th>gold entities</th><th>predicted entities</th>" in page or \
        "Every test sentence's entities were found exactly." in page
    assert "Test confusion matrix" not in page and "<p>metrics/misclassified.png</p>" not in page
    params_table = page[:page.index("Left out: ")]  # only the params in use; the others named once, after it
    assert "prepare.tag_scheme" in params_table and "prepare.audio_column" not in params_table
    assert "prepare.audio_column" in page[page.index("Left out: "):]
    predictions = pd.read_csv(ner_repo.root / "metrics" / "predictions.csv")
    loaded = crosstune.load(str(ner_repo.root / "models" / "finetuned"))
    for row, record in zip(predictions.itertuples(index=False), loaded.predict(predictions["text"].tolist())):
        sentence = TaggedSentence(row.text, tuple(tuple(span) for span in json.loads(row.words)), ())
        expected = [(e["start"], e["end"], e["label"]) for e in entity_records(sentence, row.predicted.split())]
        assert [(e["start"], e["end"], e["label"]) for e in record["entities"]] == expected, row.text

    out = tmp_path / "export"
    ner_repo.run(str(Path(sys.executable).parent / "crosstune"), "export", "--out", str(out))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    texts = []  # six-word pieces of the test sentences that fit one window (the pipeline's own long-text
    for text, words in zip(predictions["text"], predictions["words"]):  # chunking differs from the windows)
        spans = json.loads(words)
        for start in range(0, len(spans), 4):
            piece = text[spans[start][0] : spans[min(start + 5, len(spans) - 1)][1]]
            if len(tokenizer(piece)["input_ids"]) <= 24:
                texts.append(piece)
    ours = crosstune.load(str(out)).predict(texts)
    assert len(texts) > 100 and sum(len(record["entities"]) for record in ours) > 20
    tagger = transformers.pipeline("token-classification", model=str(out), aggregation_strategy="first")
    for text, record, theirs in zip(texts, ours, tagger(texts)):
        assert [(e["start"], e["end"], e["entity_group"]) for e in theirs] == \
            [(e["start"], e["end"], e["label"]) for e in record["entities"]], text
        assert [float(e["score"]) for e in theirs] == pytest.approx([e["score"] for e in record["entities"]],
                                                                    abs=1e-4)


@pytest.fixture(scope="module")
def transcription_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("transcription"), transcription=True)


def test_transcription_end_to_end_and_the_stock_pipeline(transcription_repo: Repo, tmp_path: Path) -> None:
    """Connected digits (16 utterances of 4 speakers; 2 unseen speakers in test) through every stage with a tiny
    random Whisper: the encoder cached, the zero-shot guard, WER per speaker; `crosstune predict` on the raw table
    gives the transcripts evaluate wrote, and the export transcribes in
    `transformers.pipeline("automatic-speech-recognition")` as `crosstune predict` does."""
    import numpy as np
    import pandas as pd
    import transformers

    import crosstune
    from crosstune.data.audio import INT16_SCALE, read_audio, resample

    repo = transcription_repo
    assert repo.baseline() == ALL_STAGES
    metrics = repo.metrics()
    assert {"wer", "cer", "george_wer", "lucas_wer", "probe_wer", "finetuned_validation_wer",
            "probe_validation_wer", "finetuning_gain"} <= set(metrics)
    assert metrics["test_size"] == 6 and metrics["exported_model"] in ("finetuned", "probe")
    assert json.loads((repo.root / "metrics" / "cache.json").read_text())["cached"] if \
        (repo.root / "metrics" / "cache.json").is_file() else True
    assert (repo.root / "metrics" / "misclassified.png").stat().st_size > 1000
    assert repo.repro() == set()
    predictions = pd.read_csv(repo.root / "metrics" / "predictions.csv", keep_default_na=False)
    table = repo.root / "data" / "digits" / "test.csv"
    out = repo.root / "predicted.csv"
    repo.run(str(Path(sys.executable).parent / "crosstune"), "predict", "--model",
             "models/finetuned" if metrics["exported_model"] == "finetuned" else "models/probe",
             "--input", str(table), "--output", str(out))
    assert pd.read_csv(out, keep_default_na=False)["predicted_text"].tolist() == predictions["predicted"].tolist()

    export = tmp_path / "export"
    repo.run(str(Path(sys.executable).parent / "crosstune"), "export", "--out", str(export))
    paths = [str(table.parent / path) for path in pd.read_csv(table)["audio"]]
    ours = [record["text"] for record in crosstune.load(str(export)).predict(paths)]
    samples = []
    for path in paths:  # what crosstune decodes: 16 kHz, stored as int16
        wave = np.round(np.clip(resample(*read_audio(path), 16000), -1, 1) * INT16_SCALE) / INT16_SCALE
        samples.append({"raw": wave.astype(np.float32), "sampling_rate": 16000})
    recogniser = transformers.pipeline("automatic-speech-recognition", model=str(export))
    assert [row["text"].strip() for row in recogniser(samples, batch_size=4)] == ours

    # the report: the zero-shot guard in words, WER per speaker, the worst utterances aligned
    repo.run(str(Path(sys.executable).parent / "crosstune"), "report", "--out", "report.html")
    page = (repo.root / "report.html").read_text(encoding="utf-8")
    (repo.root / "report.html").unlink()
    assert "Did fine-tuning help? Measured:" in page and "zero-shot" in page
    speakers = page[page.index("<h2>Per speaker</h2>"):]
    assert re.search(r"<tr><td>george</td><td class=\"number\">[0-9.]+</td>", speakers)
    assert "<h2>Per class</h2>" not in page and "Test confusion matrix" not in page
    assert "<p>metrics/misclassified.png</p>" not in page  # the aligned transcripts show the mistakes
    if (predictions["word_errors"] > 0).any():
        assert "<th>reference</th><th>transcript</th>" in page


@pytest.fixture(scope="module")
def detection_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return Repo(tmp_path_factory.mktemp("detection"), boxes=True)


def test_detection_end_to_end(detection_repo: Repo, tmp_path: Path) -> None:
    """Generated squares in a Pascal VOC folder through every stage with FCOS on the tiny CNN: the frozen block
    cached, the probe and scratch detectors trained, mAP per class and the counting error; `crosstune predict` on
    the test folder gives the boxes evaluate found, as JSON and drawn; the report's per-class table and worst
    images."""
    import pandas as pd

    repo = detection_repo
    assert repo.baseline() == ALL_STAGES
    metrics = repo.metrics()
    assert {"map", "map_50", "map_75", "count_mae", "cell_ap", "dot_ap_50", "cell_count_mae", "transfer_gain",
            "finetuning_gain", "finetuned_validation_map", "probe_validation_map",
            "scratch_validation_map"} <= set(metrics)
    assert metrics["test_size"] == 8 and metrics["exported_model"] in ("finetuned", "probe", "scratch")
    assert json.loads((repo.root / "data" / "features" / "meta.json").read_text())["cached"]
    assert json.loads((repo.root / "models" / "probe" / "probe.json").read_text())["fitted_on"] == 18
    assert (repo.root / "metrics" / "misclassified.png").stat().st_size > 1000
    assert repo.repro() == set()

    predictions = pd.read_csv(repo.root / "metrics" / "predictions.csv", keep_default_na=False)
    exported = "models/finetuned" if metrics["exported_model"] == "finetuned" else f"models/{metrics['exported_model']}"
    out, drawn = tmp_path / "boxes.json", tmp_path / "drawn"
    repo.run(str(Path(sys.executable).parent / "crosstune"), "predict", "--model", exported, "--input",
             "data/boxes/test/JPEGImages", "--output", str(out), "--draw", str(drawn))
    records = {Path(row["image"]).name: row["boxes"] for row in json.loads(out.read_text())}
    assert len(records) == 8 and sorted(path.name for path in drawn.iterdir()) == sorted(records)
    for row in predictions.itertuples(index=False):
        confident = [box for box in records[Path(row.image).name] if box["score"] >= 0.5]
        assert json.loads(row.predicted) == confident  # the same letterboxed pixels, the same boxes

    repo.run(str(Path(sys.executable).parent / "crosstune"), "report", "--out", "report.html")
    page = (repo.root / "report.html").read_text(encoding="utf-8")
    (repo.root / "report.html").unlink()
    assert re.search(r"<tr><td>cell</td><td class=\"number\">[0-9.]+</td>", page[page.index("<h2>Per class</h2>"):])
    assert "<h2>Worst test images</h2>" in page and "data:image/png;base64," in page
    assert "Test confusion matrix" not in page
