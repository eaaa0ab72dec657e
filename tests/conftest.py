"""Shared fixtures: synthetic target data, a params file for the tiny random BERT, and the
library-level pipeline run on them. No network, no pretrained weights."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests that share a module-scoped fixture on one test worker. ``make test`` runs two workers
    (pytest-xdist, ``-n 2 --dist loadgroup`` in pyproject.toml); a module fixture (a repo that ran the whole
    pipeline, a converted model) is built once per worker that needs it, so its users form one ``xdist_group``:
    the fixtures a test uses together are joined (union-find), per test file. Only fixtures defined under tests/
    count (pytest's own session fixtures, such as ``tmp_path_factory``, share nothing costly). Without xdist the
    marks do nothing; ``pytest -n0`` runs in one process (for ``--pdb``)."""
    import inspect

    tests = REPO_ROOT / "tests"
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    def ours(definition: Any) -> bool:
        try:
            return Path(inspect.getfile(definition.func)).resolve().is_relative_to(tests)
        except TypeError:  # a built-in
            return False

    shared_by_item = []
    for item in items:
        definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        shared = sorted(f"{Path(item.nodeid.split('::')[0]).stem}.{name}" for name, defs in definitions.items()
                        if defs and defs[-1].scope != "function" and ours(defs[-1]))
        for key in shared[1:]:
            parent[root(key)] = root(shared[0])
        shared_by_item.append(shared)
    for item, shared in zip(items, shared_by_item):
        if shared:
            item.add_marker(pytest.mark.xdist_group(root(shared[0])))
    if config.getvalue("loadgroup"):  # on an xdist worker with --dist loadgroup
        _name_the_groups(items)


def _name_the_groups(items: list[pytest.Item]) -> None:
    """Append each test's ``xdist_group`` to its id (``test_x@group``), which is what xdist's scheduler reads.
    xdist 3.8 does this by setting ``item._nodeid``, which pytest 9 no longer reads (the id is ``item._id``, a
    ``NodeId``), so without this every group is silently ignored: measured on this project's pins."""
    from _pytest.nodeid import NodeId

    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                        for mark in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


def documented_reruns() -> dict[str, set[str]]:
    """docs/pipeline.md's "What a change reruns" table, change (a params key, or ``nothing``) -> stages: the one
    statement of it, which tests/test_docs.py derives from dvc.yaml and the end-to-end tests run."""
    text = (REPO_ROOT / "docs" / "pipeline.md").read_text(encoding="utf-8")
    table = text[text.index("| change | reruns |"):].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        change, stages = (cell.strip() for cell in line.strip("|").split("|"))
        rows[change.strip("`")] = set() if stages == "nothing" else {name.strip(" `") for name in stages.split(",")}
    return rows


DETECTION_PARAMS = {  # FCOS on the tiny CNN over generated squares (make_box_images): cache, probe, scratch detector
    "data": {"train": "data/boxes/train", "test": "data/boxes/test"},
    "prepare": {"task": "detection", "validation_fraction": 0.25, "min_examples_per_class": 2},
    "backbone": {"name": "tiny-cnn", "weights": "none"},
    "freeze": {"depth": 1},
    "head": {"fpn_channels": 32},
    "finetune": {"epochs": 1, "lr": 0.003, "batch_size": 4, "loss": "detection", "select_metric": "map",
                 "class_weights": "none"},
    "probe": {"epochs": 1, "lr": 0.003, "batch_size": 4},
    "evaluate": {"baselines": [], "guard": "fallback"},
}


CLASS_WORDS = {
    "negative": ["terrible", "awful", "worse", "nausea", "useless", "headache"],
    "neutral": ["okay", "average", "unsure", "moderate", "mixed", "fine"],
    "positive": ["great", "excellent", "helped", "wonderful", "relief", "recommend"],
}
FILLER = ["the", "drug", "i", "took", "it", "for", "weeks", "and", "my", "doctor", "said", "was", "dose", "day"]


def make_texts(count_per_class: int, seed: int) -> list[tuple[str, str]]:
    """Short reviews whose class shows in a few indicative words among filler."""
    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(count_per_class):
            tokens = rng.choices(FILLER, k=rng.randint(6, 14)) + rng.choices(words, k=3)
            rng.shuffle(tokens)
            rows.append((" ".join(tokens), label))
    rng.shuffle(rows)
    return rows


def write_table(path: Path, rows: list[tuple[str, str]], text_column: str = "review",
                label_column: str = "rating") -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=[text_column, label_column])
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


TINY_PARAMS = {  # only what differs from the defaults (crosstune.config, equal to params.yaml)
    "data": {"train": "data/raw/train.csv", "test": "data/raw/test.csv", "source": "data/source"},
    "base": {"seed": 7, "device": "cpu", "num_threads": 1},
    "prepare": {"validation_fraction": 0.2},
    "backbone": {"name": "tiny-bert", "max_length": 32,
                 "tiny": {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
                          "vocab_size": 200}},
    "head": {"hidden_dim": 16},
    "finetune": {"lr": 0.003, "epochs": 3, "batch_size": 8, "max_length": 32, "log_every": 2},
    "cache": {"batch_size": 16},
    "evaluate": {"batch_size": 16, "guard": "off"},
}


def write_params(path: Path, overrides: dict | None = None) -> Path:
    """Write a complete params file: every section's defaults, TINY_PARAMS over them, then
    ``{"section": {"key": value}}`` overrides (DVC needs every key a stage lists to be in the file)."""
    from crosstune.config import SECTIONS, to_dict

    params = {"data": {}, **{section: to_dict(cls()) for section, cls in SECTIONS.items()}}
    for layer in (TINY_PARAMS, overrides or {}):
        for section, values in layer.items():
            params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def raw_data(tmp_path: Path) -> dict[str, Path]:
    """Train (30 per class) and test (10 per class) CSVs of synthetic reviews."""
    return {
        "train": write_table(tmp_path / "raw" / "train.csv", make_texts(30, seed=1)),
        "test": write_table(tmp_path / "raw" / "test.csv", make_texts(10, seed=2)),
    }


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.yaml")


@pytest.fixture
def attached(tmp_path: Path, raw_data: dict[str, Path], params_file: Path) -> dict[str, Path]:
    """Run prepare, backbone and attach-head through the library; return the output paths."""
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    paths = {
        "prepared": tmp_path / "data" / "prepared",
        "backbone": tmp_path / "models" / "backbone",
        "encoded": tmp_path / "data" / "encoded",
        "initial": tmp_path / "models" / "initial",
        "params": params_file,
    }
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(paths["prepared"]), str(params_file))
    backbone_stage(str(paths["prepared"]), str(paths["backbone"]), str(paths["encoded"]),
                   str(tmp_path / "metrics" / "backbone.json"), str(tmp_path / "metrics" / "selection.json"),
                   str(tmp_path / "metrics" / "selection.csv"), str(params_file))
    attach_head_stage(str(paths["backbone"]), str(paths["prepared"]), str(paths["initial"]),
                      str(tmp_path / "metrics" / "freeze.json"), str(params_file))
    return paths


COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def write_image_folder(root: Path, per_class: int, seed: int, side: int = 40) -> Path:
    """An ImageFolder of noisy colour squares, one colour per class: learnable by a tiny CNN."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, colour in COLOURS.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            noise = rng.integers(-40, 40, size=(side, side, 3))
            pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype("uint8")
            Image.fromarray(pixels, mode="RGB").save(folder / f"{label}_{seed}_{index}.png")
    return root


def make_box_images(count: int, seed: int, width: int = 96, height: int = 64) -> list[tuple[Any, list[list]]]:
    """``count`` images of grey noise with 1 to 3 filled squares (red ``cell``, blue ``dot``) and their boxes
    ``[x_min, y_min, x_max, y_max, class]``: a detector can learn them, and every format can write them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    made = []
    for _ in range(count):
        pixels = rng.integers(90, 140, size=(height, width, 3)).astype("uint8")
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            label = "cell" if rng.random() < 0.6 else "dot"
            side = int(rng.integers(12, 24)) if label == "cell" else int(rng.integers(6, 10))
            x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            pixels[y0:y0 + side, x0:x0 + side] = (220, 40, 40) if label == "cell" else (40, 40, 220)
            boxes.append([x0, y0, x0 + side, y0 + side, label])
        made.append((Image.fromarray(pixels, mode="RGB"), boxes))
    return made


def write_boxes(root: Path, fmt: str, images: list[tuple[Any, list[list]]], prefix: str = "img") -> Path:
    """``images`` (from :func:`make_box_images`) as a Pascal VOC folder, a COCO JSON (returned) or a YOLO folder
    under ``root``; returns the path to give ``read_annotations``."""
    import json

    classes = ["cell", "dot"]
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "voc":
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "JPEGImages").mkdir(exist_ok=True)
    elif fmt == "yolo":
        (root / "images").mkdir(exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        (root / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    for index, (image, boxes) in enumerate(images):
        name = f"{prefix}_{index:03d}.png"
        width, height = image.size
        if fmt == "voc":
            image.save(root / "JPEGImages" / name)
            objects = "".join(f"<object><name>{b[4]}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                              f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
            (root / "Annotations" / f"{prefix}_{index:03d}.xml").write_text(
                f"<annotation><filename>{name}</filename><size><width>{width}</width><height>{height}</height>"
                f"<depth>3</depth></size>{objects}</annotation>", encoding="utf-8")
        elif fmt == "yolo":
            image.save(root / "images" / name)
            (root / "labels" / f"{prefix}_{index:03d}.txt").write_text("".join(
                f"{classes.index(b[4])} {(b[0] + b[2]) / 2 / width} {(b[1] + b[3]) / 2 / height} "
                f"{(b[2] - b[0]) / width} {(b[3] - b[1]) / height}\n" for b in boxes), encoding="utf-8")
        else:
            image.save(root / name)
            coco["images"].append({"id": index, "file_name": name, "width": width, "height": height})
            coco["annotations"] += [{"id": len(coco["annotations"]) + k, "image_id": index,
                                     "category_id": classes.index(b[4]) + 1, "iscrowd": 0,
                                     "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for k, b in enumerate(boxes)]
    if fmt == "coco":
        (root / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
        return root / "annotations.json"
    return root


# Builders shared by several test modules: tiny models, their inputs, and the tiny pipeline with a source domain.

TEXTS = [text for text, _ in make_texts(10, seed=0)]


def tiny_backbone_params():
    """A 3-block tiny-bert with a WordPiece vocabulary learnt from :data:`TEXTS`."""
    from crosstune.config import BackboneParams, TinyBertParams

    return BackboneParams(name="tiny-bert", max_length=32, tiny=TinyBertParams(num_layers=3, vocab_size=150))


def tiny_model(head_type: str = "linear", pooling: str = "mean", seed: int = 0):
    """A tiny-bert transfer model with a new head, and its tokenizer."""
    from crosstune.backbones.text import load_backbone
    from crosstune.transfer_model.modules import build_transfer_model

    loaded = load_backbone(tiny_backbone_params(), TEXTS, seed)
    model = build_transfer_model(loaded.model, task="classification", labels=["a", "b", "c"], head_type=head_type,
                                 pooling=pooling, dropout=0.1, hidden_dim=8, seed=seed)
    return model, loaded.tokenizer


def token_batch(tokenizer, texts=TEXTS[:4]):
    """(input_ids, attention_mask) of ``texts``, padded."""
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def image_model(name: str, seed: int = 0):
    """A vision backbone of the registry (random weights) with a new linear head."""
    from crosstune.backbones.vision import build_vision_backbone
    from crosstune.transfer_model.modules import build_transfer_model

    backbone = build_vision_backbone(name, "none", seed)
    return build_transfer_model(backbone, task="classification", labels=["a", "b", "c"], head_type="linear",
                                pooling="mean", dropout=0.0, hidden_dim=8, seed=seed)


def attached_model(paths: dict[str, Path], depth: object = 0):
    """The ``attached`` fixture's model, loaded and frozen to ``depth``."""
    from crosstune.freezing.policy import apply_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    model, _ = load_transfer_model(paths["initial"])
    apply_freeze(model, depth)
    return model


def load_splits(paths: dict[str, Path]):
    """The ``attached`` fixture's encoded train and validation splits."""
    from crosstune.data.text_encoding import load_split

    return (load_split(paths["encoded"] / "train.safetensors"),
            load_split(paths["encoded"] / "validation.safetensors"))


def fit(model, train_split, validation_split, params, seed: int = 0, device: str = "cpu", batching=None, level=None,
        callbacks=()):
    """:func:`crosstune.training.loop.train` on two splits, as the finetune stage calls it (text batches unless
    ``batching`` says otherwise; the precision ``params.mixed_precision`` gives on ``device``)."""
    from crosstune.data.batching import TextBatching
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import RunContext

    data = TrainingData(train_split, validation_split, batching or TextBatching(params.batch_size, params.max_length),
                        level)
    return train(model, data, params, seed, RunContext.single_process(device, params.mixed_precision),
                 callbacks=callbacks)


KILL_AT_STEP = REPO_ROOT / "tests" / "helpers" / "kill_at_step.py"


def write_source(tmp_path: Path, labels: dict[str, str] | None = None, per_class: int = 20) -> Path:
    """Source reviews: the same kind of texts, with a domain marker word in every one."""
    rows = [(f"gardening {text} gardening", (labels or {}).get(label, label))
            for text, label in make_texts(per_class, seed=5)]
    return write_table(tmp_path / "source" / "source.csv", rows)


def adaptation_run(tmp_path: Path, raw_data, finetune: dict, prepare: dict | None = None,
                   evaluate: dict | None = None) -> dict:
    """prepare (with a source) -> backbone -> attach -> cache -> finetune -> scratch -> probe -> evaluate on
    tiny-bert."""
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.prepare import prepare_stage
    from crosstune.pipeline.probe import probe_stage
    from crosstune.pipeline.scratch import scratch_stage

    write_source(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"prepare": {"target_labelled": 0.0, **(prepare or {})},
                                                     "freeze": {"depth": 1}, "finetune": finetune,
                                                     "evaluate": evaluate or {}})
    paths = {name: str(tmp_path / name) for name in ("prepared", "backbone", "encoded", "initial", "features",
                                                      "finetuned")}
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), paths["prepared"], str(params),
                  str(tmp_path / "source"))
    backbone_stage(paths["prepared"], paths["backbone"], paths["encoded"], str(tmp_path / "backbone.json"),
                   str(tmp_path / "selection.json"), str(tmp_path / "selection.csv"), str(params))
    attach_head_stage(paths["backbone"], paths["prepared"], paths["initial"], str(tmp_path / "freeze.json"),
                      str(params))
    cache = cache_stage(paths["initial"], paths["encoded"], paths["features"], str(params))
    finetune_stage(paths["initial"], paths["encoded"], paths["finetuned"], str(tmp_path / "live"), str(params),
                   paths["features"])
    scratch_stage(paths["initial"], paths["encoded"], str(tmp_path / "scratch"), str(params))
    probe_stage(paths["initial"], paths["encoded"], str(tmp_path / "probe"), str(tmp_path / "probe.json"), str(params),
                paths["features"])
    metrics = evaluate_stage(paths["finetuned"], paths["encoded"], paths["prepared"], str(tmp_path / "eval.json"),
                             str(tmp_path / "predictions.csv"), str(tmp_path / "misclassified.png"), str(params),
                             paths["initial"], str(tmp_path / "scratch"), str(tmp_path / "probe"))
    return {"cache": cache, "metrics": metrics, "paths": paths}


TONES = {"low": 300.0, "mid": 900.0, "high": 2000.0}  # Hz: one tone per class, learnable by a tiny CNN


def write_audio_folder(root: Path, per_class: int, seed: int, rate: int = 8000, seconds: float = 0.4,
                       subtype: str = "PCM_16", suffix: str = ".wav") -> Path:
    """A folder per class of noisy tones (lengths vary by up to 25%), one pitch per class."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(seed)
    for label, frequency in TONES.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            size = int(rate * seconds * rng.uniform(0.75, 1.0))
            time = np.arange(size) / rate
            wave = 0.4 * np.sin(2 * np.pi * frequency * rng.uniform(0.95, 1.05) * time) + 0.05 * rng.standard_normal(size)
            soundfile.write(folder / f"{label}_{seed}_{index}{suffix}", wave.astype("float32"), rate, subtype=subtype)
    return root


def audio_model(name: str, weights: str = "none", seed: int = 0, clip_samples: int = 0):
    """An audio backbone of the registry with a new linear head; clips of one second by default."""
    from crosstune.backbones.audio import build_audio_backbone
    from crosstune.transfer_model.modules import build_transfer_model

    backbone = build_audio_backbone(name, weights, seed)
    backbone.set_clip(clip_samples or backbone.preprocessing.sample_rate, "center")
    return build_transfer_model(backbone, task="classification", labels=["a", "b", "c"], head_type="linear",
                                pooling="mean", dropout=0.0, hidden_dim=8, seed=seed)


def audio_batch(model, count: int = 3, seed: int = 0):
    """``input_features`` of ``count`` random one-clip waveforms for an audio model."""
    import torch

    from crosstune.data.audio import AudioBatcher

    generator = torch.Generator().manual_seed(seed)
    clip = model.backbone.preprocessing
    waveforms = (torch.randn(count, clip.clip_samples, generator=generator) * 3000).to(torch.int16)
    return AudioBatcher(clip)(waveforms)


# Headless Chromium with nothing that reaches a network: with background networking on, a browser on a
# machine whose network drops packets can wait on its component updater instead of exiting.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-extensions",
                  "--virtual-time-budget=15000")


def run_chromium(profile: Path, *args: str, timeout: float = 120.0, attempts: int = 2) -> str:
    """Run headless Chromium on ``args`` and return its stdout; skip the test where it is not installed.

    The browser runs in its own process group with its output in a file: on a timeout the whole group is
    killed (``subprocess.run(timeout=...)`` kills only the parent, and a renderer left holding the output pipe
    keeps ``run`` waiting for ever), then it is tried once more with a fresh profile."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium); browser check skipped")
    for attempt in range(1, attempts + 1):
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}-{attempt}", *args]
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, start_new_session=True)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the browser's children, if any outlived it
                except ProcessLookupError:
                    pass
                process.wait()
            shutil.rmtree(f"{profile}-{attempt}", ignore_errors=True)
            stdout.seek(0)
            stderr.seek(0)
            if code == 0:
                return stdout.read().decode("utf-8", "replace")
            if code is not None:
                raise AssertionError(f"chromium exited {code}: {stderr.read().decode('utf-8', 'replace')[-2000:]}")
    raise AssertionError(f"chromium did not finish within {timeout:.0f} s, {attempts} times: {' '.join(args)}")


def write_tiny_whisper(directory: Path, seed: int = 0) -> Path:
    """A random Whisper 2 + 2 layers and 32 wide, with the packaged tokenizer and Whisper's generation rules: what
    transcription tests give as ``backbone.name`` (a local recogniser directory)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from crosstune.backbones.whisper_weights import packaged_whisper_dir, whisper_generation_config, whisper_tokenizer

    if (directory / "model.safetensors").is_file():
        return directory
    source = packaged_whisper_dir()
    tokenizer = whisper_tokenizer(source)
    end, start = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    config = WhisperConfig(vocab_size=51864, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           max_source_positions=1500, max_target_positions=448, pad_token_id=end, bos_token_id=end,
                           eos_token_id=end, decoder_start_token_id=start)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = whisper_generation_config(source, tokenizer, config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16000).save_pretrained(directory)
    return directory


def write_digit_strings(directory: Path, train_per_speaker: int = 6, test_per_speaker: int = 4) -> Path:
    """The speech-recognition example's utterances (data/make_digit_strings.py), a few per speaker."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_digit_strings", REPO_ROOT / "data" / "make_digit_strings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(directory, train_per_speaker, test_per_speaker)
    return directory
