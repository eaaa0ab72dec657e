"""Audio data: reading and validating recordings, storing decoded splits, and batches of features.

The prepare stage opens every recording once (unreadable, corrupt, empty, silent or too-short files are
errors naming the file). The backbone stage decodes each split once into ``audio.safetensors``-style
tensors: ``waveforms`` (N, S) int16 at the backbone's sample rate, every clip cut or zero-padded to the
same S samples (``backbone.clip_seconds``, placed by ``backbone.clip_align``), and ``labels``. Per batch
the backbone's own feature extraction (:mod:`crosstune.backbones.audio_features`: Whisper's log-mel, GE2E's
mel, ...) turns waveforms into model inputs, as image batches get their backbone's resize and normalisation.

Reading goes through ``soundfile`` (libsndfile: wav, flac, ogg); stereo is mixed down to mono (the mean of
the channels); resampling is polyphase (``scipy.signal.resample_poly``, up/down by the reduced ratio).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from crosstune.data.text_encoding import Batch
from crosstune.errors import DataError

if TYPE_CHECKING:
    from crosstune.backbones.audio_features import AudioPreprocessing

logger = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
SILENCE_PEAK = 10 ** (-60 / 20)  # a recording whose loudest sample is below -60 dBFS holds no speech
CLIP_ALIGNS = ("start", "center")
INT16_SCALE = 32767.0


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode one recording to mono float32 in [-1, 1]; returns (samples (S,), sample_rate)."""
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable or corrupt audio ({error}); replace or remove the file.") from error
    return samples.mean(axis=1), int(rate)


def check_audio(path: Path, min_seconds: float) -> float:
    """Fully decode one recording and return its duration in seconds, or raise `DataError`."""
    samples, rate = read_audio(path)
    if samples.size == 0:
        raise DataError(f"{path}: empty recording (0 samples); replace or remove the file.")
    if not np.isfinite(samples).all():
        raise DataError(f"{path}: holds NaN or infinite samples; re-export the recording.")
    seconds = samples.size / rate
    if seconds < min_seconds:
        raise DataError(f"{path}: {seconds:.3f} s is shorter than prepare.min_audio_seconds={min_seconds}; "
                        f"remove it or lower prepare.min_audio_seconds.")
    if float(np.abs(samples).max()) < SILENCE_PEAK:
        raise DataError(f"{path}: silent (peak below -60 dBFS); remove it or replace it with the real recording.")
    return seconds


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio ``target_rate / rate`` (identity when equal)."""
    if rate == target_rate:
        return samples
    from scipy.signal import resample_poly

    divisor = math.gcd(rate, target_rate)
    return resample_poly(samples, target_rate // divisor, rate // divisor).astype(np.float32)


def fit_clip(samples: np.ndarray, length: int, align: str) -> np.ndarray:
    """Cut or zero-pad to ``length`` samples. ``start`` keeps the beginning (pads at the end);
    ``center`` keeps the middle (pads both sides equally): the spoken part of a short clip stays centred."""
    if align not in CLIP_ALIGNS:
        raise ValueError(f"clip align {align!r}; valid: {list(CLIP_ALIGNS)}")
    size = samples.size
    if size >= length:
        offset = 0 if align == "start" else (size - length) // 2
        return samples[offset : offset + length]
    before = 0 if align == "start" else (length - size) // 2
    return np.pad(samples, (before, length - size - before))


def clip_length(paths: Sequence[str], sample_rate: int, clip_seconds: float, max_seconds: float) -> int:
    """Samples per clip: ``clip_seconds`` when > 0, else the longest recording of ``paths`` (rounded up to
    10 ms); never more than the backbone's ``max_seconds``."""
    import soundfile

    if clip_seconds <= 0:
        clip_seconds = max((soundfile.info(path).duration for path in paths), default=1.0)
        clip_seconds = math.ceil(round(clip_seconds * 100, 6)) / 100
    seconds = min(clip_seconds, max_seconds) if max_seconds > 0 else clip_seconds
    return int(round(seconds * sample_rate))


def decode_audio(paths: Sequence[str], sample_rate: int, length: int, align: str) -> torch.Tensor:
    """All recordings of a split as int16 (N, length) at ``sample_rate``: mono, resampled, cut or padded."""
    from tqdm.auto import tqdm

    clips = np.zeros((len(paths), length), dtype=np.int16)
    for row, path in enumerate(tqdm(paths, desc="decode audio", unit="file", mininterval=2.0, disable=len(paths) < 200)):
        samples, rate = read_audio(path)
        clip = fit_clip(resample(samples, rate, sample_rate), length, align)
        clips[row] = np.round(np.clip(clip, -1.0, 1.0) * INT16_SCALE).astype(np.int16)
    return torch.from_numpy(clips)


def waveforms_to_float(waveforms: torch.Tensor) -> torch.Tensor:
    """Shape: (B, S) int16 -> (B, S) float32 in [-1, 1]."""
    return waveforms.float().div_(INT16_SCALE)


@dataclass
class AudioSplit:
    """A decoded audio split.

    Shape:
        waveforms (N, S) int16 at the backbone's sample rate; labels (N,), or for transcription (N, L) token ids
        padded with -100
    """

    waveforms: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class AudioBatcher:
    """Turns int16 waveforms into the backbone's input features (its own feature extraction)."""

    def __init__(self, preprocessing: "AudioPreprocessing") -> None:
        from crosstune.backbones.audio_features import AUDIO_FEATURES

        self.preprocessing = preprocessing
        self.extract = AUDIO_FEATURES.get(preprocessing.features)

    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Shape: (B, S) int16 -> the backbone's ``input_features`` (e.g. (B, 80, T) log-mel for Whisper). Clips
        shorter than the model's ``clip_samples`` get silence after them (a recogniser scored at Whisper's own
        30-second window on a split decoded for a shorter one)."""
        missing = self.preprocessing.clip_samples - waveforms.shape[1]
        if missing > 0 and self.preprocessing.align == "start":
            waveforms = torch.nn.functional.pad(waveforms, (0, missing))
        with torch.autocast(waveforms.device.type, enabled=False):  # features are data: float32 whatever trains
            return self.extract(waveforms_to_float(waveforms))


def iterate_audio_batches(split: AudioSplit, batch_size: int, batcher: AudioBatcher,
                          generator: torch.Generator | None = None) -> Iterator[Batch]:
    """Shuffled (seeded) batches when a ``generator`` is given, else in order."""
    from crosstune.data.images import image_batch_indices

    for indices in image_batch_indices(len(split), batch_size, generator):
        labels = split.labels[indices]
        inputs = {"input_features": batcher(split.waveforms[indices])}
        if labels.dim() == 2:  # transcripts as token ids: the decoder reads them (teacher forcing)
            labels = trim_padding(labels)
            inputs["decoder_labels"] = labels
        yield Batch(indices, inputs, labels)


def trim_padding(labels: torch.Tensor) -> torch.Tensor:
    """Token-id rows cut to the batch's longest (columns of -100 padding only dropped). Shape: (B, L) -> (B, L')."""
    kept = int((labels != -100).sum(dim=1).max()) if labels.numel() else 0
    return labels[:, :max(kept, 1)]


def save_audio_split(split: AudioSplit, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({"waveforms": split.waveforms.contiguous(), "labels": split.labels}, str(path))


def is_audio_folder(directory: Path) -> bool:
    """Whether a folder-per-class layout holds recordings (the first class folder with files decides)."""
    for class_dir in sorted(child for child in directory.iterdir() if child.is_dir() and not child.name.startswith(".")):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                return path.suffix.lower() in AUDIO_SUFFIXES
    return False
