"""Feature extraction for audio backbones, by name: what each backbone's weights expect as input.

Every audio backbone names one entry (saved in its ``config.json`` under ``preprocessing.features``), the
way vision weights carry their transforms; the batcher, the predictor and the MFCC baseline all ask here.

- ``whisper-log-mel``: Whisper's 80-bin log-mel (Radford et al. 2022, https://arxiv.org/abs/2212.04356)
  through ``transformers.WhisperFeatureExtractor`` at 16 kHz, over the clip's own frames (no 30 s padding):
  ``M = max(log10(mel), max(log10(mel)) - 8); x = (M + 4) / 4``, shape (B, 80, S / 160).
- ``ge2e-mel``: the 40-bin power mel of the GE2E speaker encoder (Wan et al. 2018,
  https://arxiv.org/abs/1710.10467), 25 ms Hann window, 10 ms hop, no log, shape (B, T, 40).
- ``log-mel-32``: ``log(mel + 1e-6)`` with 32 bins, 32 ms window, 10 ms hop at 8 kHz, shape (B, 32, T):
  the tiny test CNN's input.
- ``waveform``: the samples themselves, shape (B, S), for backbones whose spectrogram is part of the model
  (Silero VAD's STFT is a fixed convolution inside its stem).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from crosstune.registry import Registry

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]  # (B, S) float32 waveforms -> model inputs
AUDIO_FEATURES: Registry[FeatureExtractor] = Registry("audio feature extraction")


@dataclass(frozen=True)
class AudioPreprocessing:
    """What an audio backbone's weights expect: sample rate, clip length, clip placement and features."""

    sample_rate: int
    clip_samples: int
    align: str
    features: str

    def as_dict(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "clip_samples": self.clip_samples, "align": self.align,
                "features": self.features}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "AudioPreprocessing":
        return cls(int(raw["sample_rate"]), int(raw["clip_samples"]), str(raw["align"]), str(raw["features"]))


@functools.lru_cache(maxsize=8)
def mel_filters(num_frequency_bins: int, num_mel_filters: int, sample_rate: int) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters (librosa's defaults). Shape: (F, M)."""
    from transformers.audio_utils import mel_filter_bank

    filters = mel_filter_bank(num_frequency_bins=num_frequency_bins, num_mel_filters=num_mel_filters,
                              min_frequency=0.0, max_frequency=sample_rate / 2, sampling_rate=sample_rate,
                              norm="slaney", mel_scale="slaney")
    return torch.from_numpy(np.asarray(filters, dtype=np.float32))


def mel_power(waveforms: torch.Tensor, sample_rate: int, window: int, hop: int, num_mels: int) -> torch.Tensor:
    """Power mel spectrogram as ``librosa.feature.melspectrogram`` (>= 0.10) computes it: |STFT|^2 with a
    periodic Hann window, centred frames (frame t centred on sample t * hop, zero padding), Slaney filters.

    Shape: (B, S) float -> (B, T, num_mels), T = S // hop + 1.
    """
    if waveforms.dim() != 2 or not waveforms.is_floating_point():
        raise ValueError(f"waveforms must be float (batch, samples), got {tuple(waveforms.shape)} {waveforms.dtype}")
    spectrum = torch.stft(waveforms, n_fft=window, hop_length=hop,
                          window=torch.hann_window(window, dtype=waveforms.dtype, device=waveforms.device),
                          center=True, pad_mode="constant", return_complex=True)
    power = spectrum.real.square() + spectrum.imag.square()  # (B, F, T)
    filters = mel_filters(window // 2 + 1, num_mels, sample_rate).to(waveforms.dtype)
    return torch.einsum("bft,fm->btm", power, filters.to(waveforms.device))


@AUDIO_FEATURES.register("whisper-log-mel")
def whisper_log_mel(waveforms: torch.Tensor) -> torch.Tensor:
    """Shape: (B, S) at 16 kHz -> (B, 80, S // 160)."""
    extractor = _whisper_extractor()
    features = extractor(list(waveforms.numpy()), sampling_rate=16000, return_tensors="pt", padding=False,
                         device="cpu")
    return features["input_features"].float()


@functools.lru_cache(maxsize=1)
def _whisper_extractor() -> Any:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80, sampling_rate=16000)


@AUDIO_FEATURES.register("ge2e-mel")
def ge2e_mel(waveforms: torch.Tensor) -> torch.Tensor:
    """Shape: (B, S) at 16 kHz -> (B, S // 160 + 1, 40)."""
    return mel_power(waveforms, 16000, 400, 160, 40)


@AUDIO_FEATURES.register("log-mel-32")
def log_mel_32(waveforms: torch.Tensor) -> torch.Tensor:
    """Shape: (B, S) at 8 kHz -> (B, 32, S // 80 + 1)."""
    return torch.log(mel_power(waveforms, 8000, 256, 80, 32) + 1e-6).transpose(1, 2)


@AUDIO_FEATURES.register("waveform")
def waveform(waveforms: torch.Tensor) -> torch.Tensor:
    """Shape: (B, S) float -> (B, S), unchanged."""
    return waveforms


def mfcc_statistics(waveforms: torch.Tensor, sample_rate: int, num_coefficients: int = 13) -> np.ndarray:
    """MFCC summary per clip (Davis & Mermelstein 1980): c = DCT-II(log mel) of 25 ms / 10 ms frames, first
    ``num_coefficients``; returns the mean and standard deviation over voiced frames of c and its first
    difference. Zero padding is not speech: frames with no energy are left out.

    Shape: (B, S) float32 -> (B, 4 * num_coefficients).
    """
    from scipy.fft import dct

    if not len(waveforms):  # e.g. no labelled target row (unsupervised adaptation)
        return np.zeros((0, 4 * num_coefficients), dtype=np.float32)
    window, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    window = 1 << (window - 1).bit_length()  # FFT size: next power of two
    mel = mel_power(waveforms, sample_rate, window, hop, 40).numpy()
    rows = []
    for frames in mel:
        voiced = frames[frames.sum(axis=1) > 1e-8]
        if len(voiced) < 2:
            voiced = frames[:2]
        coefficients = dct(np.log(voiced + 1e-10), type=2, norm="ortho", axis=1)[:, :num_coefficients]
        deltas = np.diff(coefficients, axis=0)
        rows.append(np.concatenate([coefficients.mean(0), coefficients.std(0), deltas.mean(0), deltas.std(0)]))
    return np.stack(rows).astype(np.float32)
