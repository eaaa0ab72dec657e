"""head.type hf: the saved directory is a stock Hugging Face classification model that transformers loads as is,
and crosstune trains, caches, freezes, adapts (LoRA) and reloads it like any other head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TEXTS, tiny_backbone_params, tiny_model, token_batch, write_params
from test_prefix_cache import _train_both

from crosstune.config import HeadParams
from crosstune.errors import ConfigError
from crosstune.heads.hf import DROPOUT_KEYS
from crosstune.transfer_model.modules import build_transfer_model
from crosstune.transfer_model.storage import load_transfer_model, save_transfer_model

LABELS = ["a", "b", "c"]


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """The ``attached`` fixture's params (conftest), with the hf head and the bottom block frozen."""
    return write_params(tmp_path / "params.yaml", {"head": {"type": "hf", "pooling": "cls"},
                                                   "freeze": {"depth": 1}})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """A tiny-bert hf model trained a few steps (so that predictions differ by text) and saved: its directory,
    the model and its tokenizer."""
    directory = tmp_path_factory.mktemp("hf-model")
    model, tokenizer = tiny_model("hf", "cls")
    input_ids, mask = token_batch(tokenizer, TEXTS[:8])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(input_ids, mask), torch.arange(8) % 3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    save_transfer_model(model, directory, tokenizer, extra={"max_length": 32, "freeze": {"depth": 0}})
    return directory, model, tokenizer


def test_directory_is_a_stock_hugging_face_classification_model(saved: tuple[Path, Any, Any]) -> None:
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        BertForSequenceClassification,
    )

    directory, model, tokenizer = saved
    config = AutoConfig.from_pretrained(directory)
    assert config.model_type == "bert" and config.architectures == ["BertForSequenceClassification"]
    assert config.id2label == dict(enumerate(LABELS)) and config.label2id == {"a": 0, "b": 1, "c": 2}
    assert config.problem_type == "single_label_classification" and config.classifier_dropout == 0.1
    settings = json.loads((directory / "config.json").read_text())["crosstune"]
    assert settings["labels"] == LABELS and settings["head"]["type"] == "hf" and settings["max_length"] == 32

    hf_model, info = AutoModelForSequenceClassification.from_pretrained(directory, output_loading_info=True)
    assert isinstance(hf_model, BertForSequenceClassification)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    input_ids, mask = token_batch(tokenizer)
    torch.testing.assert_close(hf_model.eval()(input_ids=input_ids, attention_mask=mask).logits,
                               model(input_ids, mask), atol=1e-6, rtol=1e-5)


def test_pipeline_and_predictor_agree(saved: tuple[Path, Any, Any]) -> None:
    import transformers

    import crosstune

    directory, _, tokenizer = saved
    texts = TEXTS[:8]
    assert max(len(ids) for ids in tokenizer(texts)["input_ids"]) < 32  # nothing truncated by the predictor only
    expected = transformers.pipeline("text-classification", model=str(directory), device="cpu")(texts)
    actual = crosstune.load(directory).predict(texts)
    assert [row["label"] for row in actual] == [row["label"] for row in expected]
    assert len({row["label"] for row in actual}) > 1  # the check means something
    for got, want in zip(actual, expected):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_round_trip_gives_equal_outputs_and_files(saved: tuple[Path, Any, Any], tmp_path: Path) -> None:
    directory, model, tokenizer = saved
    loaded, config = load_transfer_model(directory)
    input_ids, mask = token_batch(tokenizer)
    torch.testing.assert_close(loaded(input_ids, mask), model(input_ids, mask))
    assert loaded.spec == model.spec | {"freeze": {"depth": 0}}
    assert config["labels"] == LABELS and config["max_length"] == 32 and config["modality"] == "text"
    save_transfer_model(loaded, tmp_path, tokenizer, extra={"max_length": 32})
    first, second = (json.loads((path / "config.json").read_text()) for path in (directory, tmp_path))
    assert first == second
    assert (directory / "model.safetensors").read_bytes() == (tmp_path / "model.safetensors").read_bytes()


def test_the_backbone_pooler_moves_into_the_head() -> None:
    from crosstune.backbones.text import load_backbone

    loaded = load_backbone(tiny_backbone_params(), TEXTS, 0)
    pooler_weight = loaded.model.pooler.dense.weight
    model = build_transfer_model(loaded.model, task="classification", labels=LABELS, head_type="hf",
                                 pooling="cls", dropout=0.1, hidden_dim=8, seed=0)
    assert model.head.model.bert.pooler.dense.weight is pooler_weight
    assert model.backbone.pooler is None and not any(name.startswith("backbone.pooler") for name in model.state_dict())
    layers, top = model.parameter_layers()
    assert all(layers[id(parameter)] == top for parameter in model.head.parameters())


def _tiny_config(model_type: str) -> Any:
    from transformers import AutoConfig

    if model_type == "distilbert":
        return AutoConfig.for_model(model_type, dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=60)
    extra = {"embedding_size": 16} if model_type == "electra" else {}
    return AutoConfig.for_model(model_type, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, vocab_size=60, max_position_embeddings=40, **extra)


@pytest.mark.parametrize("model_type", sorted(DROPOUT_KEYS))
def test_every_supported_architecture_saves_as_its_hugging_face_model(model_type: str, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(0)
    backbone = AutoModel.from_config(_tiny_config(model_type))
    model = build_transfer_model(backbone, task="classification", labels=LABELS, head_type="hf", pooling="cls",
                                 dropout=0.2, hidden_dim=8, seed=0).eval()
    save_transfer_model(model, tmp_path)
    hf_model, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert getattr(hf_model.config, DROPOUT_KEYS[model_type]) == 0.2
    input_ids = torch.randint(5, 60, (3, 9))
    mask = torch.ones_like(input_ids)
    mask[1, 6:] = 0
    torch.testing.assert_close(hf_model.eval()(input_ids=input_ids, attention_mask=mask).logits,
                               model(input_ids, mask), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(load_transfer_model(tmp_path)[0](input_ids, mask), model(input_ids, mask))


def test_lora_adapters_merge_into_the_hugging_face_weights(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from crosstune.freezing.lora import apply_lora, merge_lora

    model, tokenizer = tiny_model("hf", "cls")
    apply_lora(model, 2, 4.0, 0.0, ("query", "value"), seed=0)
    with torch.no_grad():
        for name, parameter in model.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)  # B starts at zero: make the adapters change the output
    assert all(parameter.requires_grad for parameter in model.head.parameters())
    model.eval()
    input_ids, mask = token_batch(tokenizer)
    expected = model(input_ids, mask)
    merge_lora(model)
    save_transfer_model(model, tmp_path, tokenizer)
    hf_model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hf_model(input_ids=input_ids, attention_mask=mask).logits, expected,
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("depth", [1, "all"])
def test_cached_training_matches_uncached(attached: dict[str, Path], tmp_path: Path, depth: object) -> None:
    assert json.loads((attached["initial"] / "config.json").read_text())["model_type"] == "bert"
    (plain, plain_result), (cached, cached_result) = _train_both(attached["initial"], attached["encoded"], depth,
                                                                 tmp_path)
    for (name, expected), actual in zip(plain.state_dict().items(), cached.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4, msg=name)
    assert plain_result.best_epoch == cached_result.best_epoch


def test_cache_and_finetune_stages_give_a_pipeline_model(attached: dict[str, Path], tmp_path: Path) -> None:
    import transformers

    import crosstune
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.finetune import finetune_stage

    features, finetuned = tmp_path / "features", tmp_path / "finetuned"
    meta = cache_stage(str(attached["initial"]), str(attached["encoded"]), str(features), str(attached["params"]))
    assert meta["cached"] and meta["level"] == 1
    finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(finetuned), str(tmp_path / "live"),
                   str(attached["params"]), str(features))
    texts = TEXTS[:5]
    expected = transformers.pipeline("text-classification", model=str(finetuned), device="cpu")(texts)
    actual = crosstune.load(finetuned).predict(texts)
    assert [row["label"] for row in actual] == [row["label"] for row in expected]
    assert [row["score"] for row in actual] == pytest.approx([row["score"] for row in expected], abs=1e-5)


MESSY_TEXTS = ['"I didn&#039;t  sleep &amp; felt\u00a0dizzy"', "it worked &mdash; no nausea&#8230;", "  'fine'  ",
               "caf\u00e9 \uff21\uff22 &lt;b&gt;strong&lt;/b&gt;", "&quot;great&quot; drug\n\nreally"]


def test_an_export_serves_the_texts_training_saw_through_the_stock_pipeline(attached: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """The export's tokenizer cleans texts as training and `crosstune predict` do (HTML entities, NFKC, white
    space, wrapping quotes), so the stock pipeline gives the same label and score on raw, messy texts; the same
    directory without it does not."""
    import shutil

    import transformers

    import crosstune
    from crosstune.inference.export import _normalise_in_tokenizer
    from crosstune.pipeline.finetune import finetune_stage

    finetuned = tmp_path / "finetuned"
    finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(finetuned), str(tmp_path / "live"),
                   str(attached["params"]))
    exported = tmp_path / "exported"
    shutil.copytree(finetuned, exported)
    assert "Text clean-up" in _normalise_in_tokenizer(exported, tmp_path)
    # a named tokenizer class (MiniLM's BertTokenizer) would rebuild its own normalizer and drop the clean-up
    assert json.loads((exported / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    normalizer = transformers.AutoTokenizer.from_pretrained(str(exported)).backend_tokenizer.normalizer
    assert normalizer.normalize_str(' "didn&#039;t\u00a0 sleep" ') == "didn't sleep"
    expected = crosstune.load(finetuned).predict(MESSY_TEXTS)
    for served in (transformers.pipeline("text-classification", model=str(exported), device="cpu")(MESSY_TEXTS),
                   crosstune.load(exported).predict(MESSY_TEXTS)):  # no second clean-up in crosstune's own predict
        assert [row["label"] for row in served] == [row["label"] for row in expected]
        assert [row["score"] for row in served] == pytest.approx([row["score"] for row in expected], abs=1e-5)
    unclean = transformers.pipeline("text-classification", model=str(finetuned), device="cpu")(MESSY_TEXTS)
    assert [row["score"] for row in unclean] != pytest.approx([row["score"] for row in expected], abs=1e-5)


def test_prepare_lowercase_travels_to_predict_and_to_the_exported_tokenizer(
        tmp_path: Path, raw_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``prepare.lowercase`` the model records it; `crosstune predict` lowercases new texts as prepare did,
    and the exported tokenizer's clean-up (a Lowercase step after crosstune's) gives the same texts."""
    from tokenizers import Tokenizer

    from crosstune.data.splitting import normalise_text
    from crosstune.inference.exported_tokenizer import crosstune_normalizer
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage
    from crosstune.tasks.registry import TASKS
    from crosstune.transfer_model.storage import load_transfer_model

    params = write_params(tmp_path / "params.yaml", {"prepare": {"lowercase": True}})
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params))
    backbone_stage(str(tmp_path / "prepared"), str(tmp_path / "backbone"), str(tmp_path / "encoded"),
                   str(tmp_path / "backbone.json"), str(tmp_path / "selection.json"), str(tmp_path / "selection.csv"),
                   str(params))
    attach_head_stage(str(tmp_path / "backbone"), str(tmp_path / "prepared"), str(tmp_path / "initial"),
                      str(tmp_path / "freeze.json"), str(params))
    _, config = load_transfer_model(tmp_path / "initial")
    assert config["lowercase"] is True
    texts = ["Caf\u00e9 NAUSEA &amp; Dizzy", *MESSY_TEXTS]
    seen: dict[str, list[str]] = {}
    monkeypatch.setattr("crosstune.data.text_encoding.encode_texts",
                        lambda tokenizer, clean, targets, max_length: seen.setdefault("texts", clean))
    TASKS.get("classification").decode_texts(None, texts, config, 64)
    assert seen["texts"] == [normalise_text(text, lowercase=True) for text in texts]
    assert any(text != text.lower() for text in texts) and all(text == text.lower() for text in seen["texts"])
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "pre_tokenizer": None,
            "post_processor": None, "decoder": None, "model": {"type": "WordLevel", "vocab": {"[UNK]": 0},
                                                                "unk_token": "[UNK]"},
            "normalizer": {"type": "Sequence", "normalizers": crosstune_normalizer(lowercase=True)}}
    normalizer = Tokenizer.from_str(json.dumps(spec)).normalizer
    assert [normalizer.normalize_str(text) for text in texts] == seen["texts"]


def test_hf_head_needs_a_supported_text_backbone() -> None:
    from transformers import AutoModel

    from crosstune.backbones.vision import build_vision_backbone

    with pytest.raises(ConfigError, match=r"head\.type: 'hf'.*text backbone.*\['linear', 'mlp'\]"):
        build_transfer_model(build_vision_backbone("tiny-cnn", "none", 0), task="classification", labels=LABELS,
                             head_type="hf", pooling="cls", dropout=0.1, hidden_dim=8, seed=0)
    gpt2 = AutoModel.from_config(_tiny_gpt2_config())
    with pytest.raises(ConfigError, match=r"head\.type: 'hf' does not support model type 'gpt2'.*supported: "):
        build_transfer_model(gpt2, task="classification", labels=LABELS, head_type="hf", pooling="cls",
                             dropout=0.1, hidden_dim=8, seed=0)


def _tiny_gpt2_config() -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=60, n_positions=40)


def test_head_params_reject_a_pooling_the_hf_head_does_not_use() -> None:
    from crosstune.heads.registry import check_head_params

    check_head_params(HeadParams(type="hf", pooling="cls"))
    with pytest.raises(ConfigError, match=r"head\.pooling: 'mean' does not apply to head\.type: hf.*"
                                          r"set head\.pooling: cls"):
        check_head_params(HeadParams(type="hf", pooling="mean"))
