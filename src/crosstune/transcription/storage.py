"""Recogniser directories: the backbone stage's (the pretrained Whisper at the data's window) and every model
after it, in the stock Hugging Face form (``WhisperForConditionalGeneration``: config, ``model.safetensors``,
tokenizer, feature extractor, generation config) with crosstune's fields under ``config.json``'s
``crosstune`` key, so ``transformers`` and crosstune both load each one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crosstune.errors import ArtifactError, ConfigError
from crosstune.io import artifact_fix, read_artifact_json, write_json
from crosstune.transfer_model.settings import HF_SECTION

if TYPE_CHECKING:
    from crosstune.transfer_model.speech_recognition import SpeechRecognitionModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
REGISTERED = {"whisper-tiny-en"}  # backbone.name values that load the packaged recogniser


def pretrained_recogniser(name: str, weights: str) -> Path:
    """The converted directory of the recogniser ``backbone.name`` names, or a local Hugging Face Whisper
    directory; a hub id names the fix (there is no network at run time)."""
    from crosstune.backbones.whisper_weights import converted_whisper_model

    if name in REGISTERED:
        if weights != "DEFAULT":
            raise ConfigError(f"params.yaml: backbone.weights: {weights!r}; transcription starts from the pretrained "
                              f"recogniser: set backbone.weights: DEFAULT.")
        return converted_whisper_model()
    directory = Path(name)
    if (directory / CONFIG_NAME).is_file():
        return directory
    raise ConfigError(f"params.yaml: backbone.name: {name!r} is neither a registered recogniser "
                      f"({sorted(REGISTERED)}) nor a local Whisper directory; download it once with "
                      f"`huggingface-cli download {name} --local-dir models/hub/{Path(name).name}` and set "
                      f"backbone.name to that folder.")


def save_recogniser(model: "SpeechRecognitionModel", directory: str | Path, tokenizer: Any,
                    extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` as a stock Whisper directory with crosstune's fields (spec, window) under ``crosstune``."""
    from transformers import WhisperFeatureExtractor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recogniser = model.recogniser
    recogniser.save_pretrained(directory, safe_serialization=True)
    preprocessing = model.preprocessing
    seconds = preprocessing.clip_samples // preprocessing.sample_rate
    WhisperFeatureExtractor(feature_size=recogniser.config.num_mel_bins, sampling_rate=preprocessing.sample_rate,
                            chunk_length=seconds).save_pretrained(directory)
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    config = json.loads((directory / CONFIG_NAME).read_text())
    config.pop("_name_or_path", None)
    backbone = {"name": model.spec.get("backbone_name", ""), "num_blocks": len(model.block_modules()),
                "preprocessing": preprocessing.as_dict()}
    config[HF_SECTION] = {"modality": "audio", **model.spec, "backbone": backbone, **(extra or {})}
    write_json(directory / CONFIG_NAME, config)


def load_recogniser(directory: str | Path) -> tuple["SpeechRecognitionModel", dict[str, Any]]:
    """A recogniser directory as a :class:`SpeechRecognitionModel` (fp32, eval mode) and its crosstune settings."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from crosstune.backbones.audio_features import AudioPreprocessing
    from crosstune.transfer_model.settings import model_settings
    from crosstune.transfer_model.speech_recognition import SpeechRecognitionModel

    directory = Path(directory)
    raw = read_artifact_json(directory / CONFIG_NAME)
    config = model_settings(raw)
    try:
        preprocessing = AudioPreprocessing.from_dict(config["backbone"]["preprocessing"])
        recogniser = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    except (KeyError, OSError, ValueError) as error:
        raise ArtifactError(f"{directory}: not a complete recogniser directory ({type(error).__name__}: {error}); "
                            f"{artifact_fix(directory)}") from error
    spec = {key: config[key] for key in ("task", "labels", "pooling", "head", "freeze", "input_column",
                                         "backbone_name") if key in config}
    model = SpeechRecognitionModel(recogniser, spec, preprocessing)
    model.tokenizer = load_recogniser_tokenizer(directory)
    model.eval()
    return model, config


def load_recogniser_tokenizer(directory: str | Path) -> Any:
    from transformers import WhisperTokenizer

    return WhisperTokenizer.from_pretrained(str(directory))


def pretrained_as_released(model: "SpeechRecognitionModel") -> "SpeechRecognitionModel":
    """The pretrained recogniser ``model`` was cut from, at the released model's own window (Whisper: 30 s), with
    ``model``'s spec, tokenizer and decoding bound: what zero-shot means to a user who downloads Whisper."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from crosstune.backbones.audio_features import AudioPreprocessing
    from crosstune.transcription.recogniser import POSITIONS_PER_SECOND
    from crosstune.transfer_model.speech_recognition import SpeechRecognitionModel

    source = pretrained_recogniser(model.spec.get("backbone_name", ""), "DEFAULT")
    recogniser = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    recogniser.generation_config.max_new_tokens = model.recogniser.generation_config.max_new_tokens
    seconds = int(recogniser.config.max_source_positions) // POSITIONS_PER_SECOND
    old = model.preprocessing
    released = SpeechRecognitionModel(recogniser, dict(model.spec),
                                      AudioPreprocessing(old.sample_rate, seconds * old.sample_rate, old.align,
                                                         old.features))
    released.tokenizer = model.tokenizer
    return released.eval()
