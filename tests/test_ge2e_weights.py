"""crosstune.backbones.ge2e_weights: the split GE2E encoder is resemblyzer's network, its mel is librosa's,
and bad weight files say which file and how to fix it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from crosstune.backbones.audio_features import ge2e_mel
from crosstune.backbones.ge2e_weights import (
    HOP_LENGTH,
    NUM_MEL_CHANNELS,
    SAMPLING_RATE,
    GE2EEncoder,
    load_ge2e_state,
    packaged_ge2e_weights,
)
from crosstune.errors import ArtifactError, BackboneUnavailableError

HAS_RESEMBLYZER = importlib.util.find_spec("resemblyzer") is not None
needs_resemblyzer = pytest.mark.skipif(not HAS_RESEMBLYZER, reason="resemblyzer not installed (make install adds it)")


class ReferenceEncoder(nn.Module):
    """Resemblyzer's VoiceEncoder network, written as it is there: one 3-layer LSTM, h_n[-1], linear, ReLU, L2."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mel)
        raw = F.relu(self.linear(hidden[-1]))
        return raw / torch.norm(raw, dim=1, keepdim=True)


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state with resemblyzer's key names and shapes, from a randomly initialised reference network."""
    torch.manual_seed(seed)
    return {key: value.clone() for key, value in ReferenceEncoder().state_dict().items()}


def write_checkpoint(path: Path, model_state: dict[str, torch.Tensor]) -> Path:
    torch.save({"step": 1, "model_state": model_state, "optimizer_state": {}}, path)
    return path


def state_for(source: str) -> dict[str, torch.Tensor]:
    if source == "random":
        return random_state()
    return load_ge2e_state(packaged_ge2e_weights())


@pytest.mark.parametrize("source", ["random", pytest.param("packaged", marks=needs_resemblyzer)])
def test_split_encoder_equals_resemblyzer_network(source: str) -> None:
    state = state_for(source)
    reference = ReferenceEncoder().eval()
    reference.load_state_dict(state, strict=True)
    encoder = GE2EEncoder.from_state(state).eval()
    torch.manual_seed(1)
    mel = torch.rand(3, 50, NUM_MEL_CHANNELS) * 2.0  # non-negative, like a power mel
    with torch.no_grad():
        expected, actual = reference(mel), encoder(mel)
    assert actual.shape == (3, 256)
    assert (actual - expected).abs().max().item() < 1e-5
    torch.testing.assert_close(actual.norm(dim=1), torch.ones(3))
    assert (actual >= 0).all()


def test_forward_is_layers_then_embed() -> None:
    encoder = GE2EEncoder.from_state(random_state()).eval()
    mel = torch.rand(2, 20, NUM_MEL_CHANNELS)
    with torch.no_grad():
        x = mel
        for index in range(3):
            x = encoder.forward_layer(index, x)
            assert x.shape == (2, 20, 256)
        torch.testing.assert_close(encoder.embed(x), encoder(mel))
    assert encoder.blocks == [encoder.lstm0, encoder.lstm1, encoder.lstm2]
    with pytest.raises(ValueError, match="index 3 not in 0..2"):
        encoder.forward_layer(3, x)


def test_mel_matches_independent_numpy_spectrogram() -> None:
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    rng = np.random.default_rng(0)
    seconds = np.arange(8000) / SAMPLING_RATE
    waveforms = np.stack([
        0.5 * np.sin(2 * np.pi * 440.0 * seconds) + 0.05 * rng.standard_normal(seconds.size),
        0.1 * rng.standard_normal(seconds.size),
    ]).astype(np.float32)
    filters = mel_filter_bank(num_frequency_bins=201, num_mel_filters=40, min_frequency=0, max_frequency=8000,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
    expected = np.stack([
        spectrogram(waveform.astype(np.float64), window_function(400, "hann"), frame_length=400, hop_length=160,
                    power=2.0, mel_filters=filters, mel_floor=0.0, center=True, pad_mode="constant",
                    dtype=np.float64).T
        for waveform in waveforms
    ])
    actual = ge2e_mel(torch.from_numpy(waveforms))
    assert actual.shape == (2, 1 + 8000 // HOP_LENGTH, NUM_MEL_CHANNELS) == expected.shape
    assert actual.dtype == torch.float32
    relative = np.abs(actual.numpy() - expected) / np.maximum(np.abs(expected), 1e-3 * expected.max())
    assert relative.max() < 1e-4
    in_double = ge2e_mel(torch.from_numpy(waveforms).double()).numpy()
    # transformers keeps the STFT as complex64, so even in float64 the two agree only to float32 precision
    np.testing.assert_allclose(in_double, expected, rtol=1e-6, atol=1e-9 * expected.max())


@pytest.mark.parametrize("source", ["random", pytest.param("packaged", marks=needs_resemblyzer)])
def test_embedding_is_deterministic_and_input_dependent(source: str) -> None:
    encoder = GE2EEncoder.from_state(state_for(source)).eval()
    generator = torch.Generator().manual_seed(0)
    seconds = torch.arange(16000) / SAMPLING_RATE
    waveforms = torch.stack([
        0.3 * torch.sin(2 * torch.pi * 150.0 * seconds) + 0.01 * torch.randn(16000, generator=generator),
        0.1 * torch.randn(16000, generator=generator),
    ])
    with torch.no_grad():
        first = encoder(ge2e_mel(waveforms))
        second = encoder(ge2e_mel(waveforms))
    assert torch.equal(first, second)
    assert not torch.isnan(first).any()
    assert F.cosine_similarity(first[0], first[1], dim=0).item() < 0.999


def test_missing_key_names_the_file(tmp_path: Path) -> None:
    state = random_state()
    del state["lstm.weight_ih_l2"]
    path = write_checkpoint(tmp_path / "broken.pt", state)
    with pytest.raises(ArtifactError, match=r"broken\.pt lack \['lstm\.weight_ih_l2'\]"):
        load_ge2e_state(path)


def test_wrong_shape_and_unreadable_file_name_the_file(tmp_path: Path) -> None:
    state = random_state()
    state["linear.bias"] = torch.zeros(128)
    with pytest.raises(ArtifactError, match=r"shaped\.pt have shapes \{'linear\.bias': \(128,\)\}"):
        load_ge2e_state(write_checkpoint(tmp_path / "shaped.pt", state))
    truncated = tmp_path / "truncated.pt"
    write_checkpoint(truncated, random_state())
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"cannot read GE2E weights .*truncated\.pt"):
        load_ge2e_state(truncated)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ArtifactError, match=r"list\.pt have no 'model_state'"):
        load_ge2e_state(tmp_path / "list.pt")


def test_missing_file_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(BackboneUnavailableError, match=r"pip install --no-deps resemblyzer==0\.1\.4"):
        load_ge2e_state(tmp_path / "absent.pt")


def test_packaged_weights_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackboneUnavailableError, match=r"pip install --no-deps resemblyzer==0\.1\.4"):
        packaged_ge2e_weights()


@needs_resemblyzer
def test_packaged_weights_are_found_without_importing_resemblyzer() -> None:
    path = packaged_ge2e_weights()
    assert path.name == "pretrained.pt" and path.parent.name == "resemblyzer"
    assert "resemblyzer" not in sys.modules
    state = load_ge2e_state(path)
    assert set(state) == {f"lstm.{name}_l{layer}" for layer in range(3)
                          for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")} | {"linear.weight", "linear.bias"}
