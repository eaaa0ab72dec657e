"""crosstune.model: the transfer model saves and loads (text and image) with equal predictions."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import make_texts

from crosstune.backbones.text import (
    load_backbone,
)
from crosstune.backbones.vision import (
    build_vision_backbone,
)
from crosstune.config import (
    BackboneParams,
    TinyBertParams,
)
from crosstune.model.transfer_model import (
    build_transfer_model,
    load_transfer_model,
    save_transfer_model,
)

TEXTS = [text for text, _ in make_texts(10, seed=0)]
TINY = BackboneParams(name="tiny-bert", max_length=32, tiny=TinyBertParams(num_layers=3, vocab_size=150))


def tiny_model(head_type: str = "linear", pooling: str = "mean", seed: int = 0):
    loaded = load_backbone(TINY, TEXTS, seed)
    model = build_transfer_model(loaded.model, task="classification", labels=["a", "b", "c"], head_type=head_type,
                                 pooling=pooling, dropout=0.1, hidden_dim=8, seed=seed)
    return model, loaded.tokenizer


def batch(tokenizer, texts=TEXTS[:4]):
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def test_save_load_round_trip_gives_equal_predictions(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("mlp", "cls", seed=5)
    model.spec["freeze"] = {"depth": 1, "patterns": []}
    model.eval()
    save_transfer_model(model, tmp_path / "model", tokenizer)
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    loaded, config = load_transfer_model(tmp_path / "model")
    assert config["freeze"] == {"depth": 1, "patterns": []}
    input_ids, mask = batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids, mask), model(input_ids, mask), rtol=0, atol=0)


def image_model(name: str, seed: int = 0):
    backbone = build_vision_backbone(name, "none", seed)
    return build_transfer_model(backbone, task="classification", labels=["a", "b", "c"], head_type="linear",
                                pooling="mean", dropout=0.0, hidden_dim=8, seed=seed)


def test_image_model_save_load_round_trip(tmp_path: Path) -> None:
    model = image_model("tiny-cnn", seed=3)
    model.eval()
    save_transfer_model(model, tmp_path / "model")
    loaded, config = load_transfer_model(tmp_path / "model")
    assert config["modality"] == "image" and config["backbone"]["name"] == "tiny-cnn"
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), model(pixels), rtol=0, atol=0)
