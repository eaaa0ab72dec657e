"""crosstune.model: the transfer model saves and loads (text and image) with equal predictions."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import (
    audio_batch,
    audio_model,
    image_model,
    tiny_model,
    token_batch,
)

from crosstune.transfer_model.storage import load_transfer_model, save_transfer_model


def test_save_load_round_trip_gives_equal_predictions(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("mlp", "cls", seed=5)
    model.spec["freeze"] = {"depth": 1, "patterns": []}
    model.eval()
    save_transfer_model(model, tmp_path / "model", tokenizer)
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    loaded, config = load_transfer_model(tmp_path / "model")
    assert config["freeze"] == {"depth": 1, "patterns": []}
    input_ids, mask = token_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids, mask), model(input_ids, mask), rtol=0, atol=0)


def test_image_model_save_load_round_trip(tmp_path: Path) -> None:
    model = image_model("tiny-cnn", seed=3)
    model.eval()
    save_transfer_model(model, tmp_path / "model")
    loaded, config = load_transfer_model(tmp_path / "model")
    assert config["modality"] == "image" and config["backbone"]["name"] == "tiny-cnn"
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), model(pixels), rtol=0, atol=0)


def test_audio_model_save_load_round_trip(tmp_path: Path) -> None:
    model = audio_model("tiny-audio-cnn", seed=3).eval()
    save_transfer_model(model, tmp_path / "model")
    loaded, config = load_transfer_model(tmp_path / "model")
    assert config["modality"] == "audio" and config["model_type"] == "crosstune-audio"
    assert config["backbone"]["preprocessing"] == {"sample_rate": 8000, "clip_samples": 8000, "align": "center",
                                                   "features": "log-mel-32"}
    inputs = audio_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), model(inputs), rtol=0, atol=0)
