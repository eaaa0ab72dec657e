"""The backbone stage for transcription: the pretrained recogniser cut to the data's window, and every split
decoded once (16 kHz int16 waveforms padded at the end to the window, as Whisper's feature extractor pads) with
its transcripts as token ids."""

from __future__ import annotations

import logging
from typing import Any

from crosstune.errors import DataError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
ALIGN = "start"  # zeros after the speech, as WhisperFeatureExtractor pads: the export then sees the same frames


def clip_seconds(frame: Any) -> list[float]:
    import soundfile

    return [float(soundfile.info(path).duration) for path in frame["audio"]]


def check_window(splits: dict[str, Any], durations: dict[str, list[float]], window: int, setting: float) -> None:
    """Refuse a recording longer than the window (it would be cut, and its words with it) or than Whisper's 30 s."""
    from crosstune.transcription.recogniser import MAX_SECONDS

    for name, frame in splits.items():
        for path, seconds in zip(frame["audio"], durations[name]):
            if seconds > MAX_SECONDS:
                raise DataError(f"{path}: {seconds:.1f} s is longer than Whisper's {MAX_SECONDS} s window; cut the "
                                f"recording into utterances of at most {MAX_SECONDS} s (with their transcripts).")
            if seconds > window:
                fix = (f"raise backbone.clip_seconds to {int(seconds) + 1} (at most {MAX_SECONDS})" if setting
                       else "leave backbone.clip_seconds at 0 and put the longest recordings in the training data")
                raise DataError(f"{path}: {seconds:.2f} s is longer than the recogniser's {window} s window, so words "
                                f"would be cut off; {fix}.")


def save_and_encode(params: Any, seed: int, splits: dict[str, Any], model_dir: str, encoded_dir: str) -> dict[str, Any]:
    """Save the windowed recogniser into ``model_dir`` and the encoded splits into ``encoded_dir``; returns the
    stage's summary."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    from crosstune.backbones.audio_features import AudioPreprocessing
    from crosstune.data.audio import AudioSplit, decode_audio, save_audio_split
    from crosstune.io import atomic_directory, write_json
    from crosstune.transcription.recogniser import encode_transcripts, max_new_tokens, window_seconds, windowed
    from crosstune.transcription.storage import pretrained_recogniser, save_recogniser
    from crosstune.transfer_model.speech_recognition import SpeechRecognitionModel

    if len(splits.get("source", [])):
        raise DataError("a source domain is prepared, but transcription does not adapt from one; set data.source "
                        "to data/source (no source domain).")
    source = pretrained_recogniser(params.name, params.weights)
    torch.manual_seed(seed)
    recogniser = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    tokenizer = WhisperTokenizer.from_pretrained(str(source))
    named = {name: frame for name, frame in splits.items() if name != "source"}
    durations = {name: clip_seconds(frame) for name, frame in named.items()}
    window = window_seconds(max(durations["train"]), params.clip_seconds or "auto")
    check_window(named, durations, window, params.clip_seconds)
    windowed(recogniser, window)
    limit = int(recogniser.config.max_target_positions)
    targets = {}
    for name, frame in named.items():
        try:
            targets[name] = encode_transcripts(tokenizer, list(frame["label"]), limit - 1)
        except ValueError as error:
            raise DataError(f"{name} split: {error}; split long transcripts into shorter utterances.") from error
    recogniser.generation_config.max_new_tokens = max_new_tokens(targets["train"], limit)
    preprocessing = AudioPreprocessing(SAMPLE_RATE, window * SAMPLE_RATE, ALIGN, "whisper-log-mel")
    spec = {"task": "transcription", "labels": [], "pooling": "", "backbone_name": params.name,
            "head": {"type": "decoder", "dropout": 0.0, "hidden_dim": 0,
                     "num_outputs": int(recogniser.config.vocab_size)}}
    model = SpeechRecognitionModel(recogniser, spec, preprocessing)
    with atomic_directory(model_dir) as staging:
        save_recogniser(model, staging, tokenizer)  # no block scores: freeze.depth: auto does not apply
    with atomic_directory(encoded_dir) as staging:
        for name, frame in named.items():
            waveforms = decode_audio(list(frame["audio"]), SAMPLE_RATE, window * SAMPLE_RATE, ALIGN)
            save_audio_split(AudioSplit(waveforms, targets[name]), staging / f"{name}.safetensors")
        # no source domain, but the file every later stage may depend on is there (empty), as for every task
        empty = AudioSplit(torch.zeros((0, window * SAMPLE_RATE), dtype=torch.int16),
                           torch.zeros((0, 1), dtype=torch.int64))
        save_audio_split(empty, staging / "source.safetensors")
        write_json(staging / "meta.json", {"modality": "audio", "backbone": params.name, "sample_rate": SAMPLE_RATE,
                                           "clip_samples": window * SAMPLE_RATE, "source": False})
    logger.info("transcription: Whisper at a %d s window (%d encoder positions, longest training clip %.2f s), "
                "at most %d new tokens", window, recogniser.config.max_source_positions, max(durations["train"]),
                recogniser.generation_config.max_new_tokens)
    return {"name": params.name, "source": str(source), "architecture": type(recogniser).__name__,
            "num_parameters": sum(parameter.numel() for parameter in recogniser.parameters()),
            "num_blocks": len(model.block_modules()), "hidden_size": int(recogniser.config.d_model),
            "sample_rate": SAMPLE_RATE, "clip_seconds": window,
            "longest_training_clip_seconds": round(max(durations["train"]), 3),
            "max_new_tokens": int(recogniser.generation_config.max_new_tokens),
            "longest_transcript_tokens": int(max(int((t != -100).sum(dim=1).max()) for t in targets.values()))}
