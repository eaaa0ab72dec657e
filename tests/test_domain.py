"""A labelled source domain: prepare reads and maps it, hides target labels for (semi-)unsupervised
adaptation, the backbone stage encodes it, training takes source and target batches with an adaptation
loss, the cache stands aside, and evaluate reports the domain gap before and after."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_texts, write_params, write_table

from crosstune.errors import DataError


def _source(tmp_path: Path, labels: dict[str, str] | None = None, per_class: int = 20) -> Path:
    """Source reviews: the same kind of texts, with a domain marker word in every one."""
    rows = [(f"gardening {text} gardening", (labels or {}).get(label, label))
            for text, label in make_texts(per_class, seed=5)]
    return write_table(tmp_path / "source" / "source.csv", rows)


def test_prepare_reads_the_source_domain_and_maps_its_labels(tmp_path: Path, raw_data) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    renamed = {"negative": "bad", "neutral": "meh", "positive": "good"}
    _source(tmp_path, renamed)
    params = write_params(tmp_path / "params.yaml", {"prepare": {"source_label_map": {
        "bad": "negative", "meh": "drop", "good": "positive"}}})
    summary = prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                            str(tmp_path / "source"))
    source = pd.read_csv(tmp_path / "prepared" / "source.csv")
    assert set(source["label"]) == {"negative", "positive"} and len(source) == 40
    assert summary["source_size"] == 40 and summary["train_labelled"] == summary["train_size"]


def test_source_labels_outside_the_target_set_need_a_mapping(tmp_path: Path, raw_data) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    _source(tmp_path, {"neutral": "mixed"})
    params = write_params(tmp_path / "params.yaml")
    with pytest.raises(DataError, match=r"\['mixed'\].*source_label_map"):
        prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                      str(tmp_path / "source"))
    params = write_params(tmp_path / "params.yaml", {"prepare": {"source_label_map": {"mixed": "neutral"}}})
    with pytest.raises(DataError, match=r"\['negative', 'positive'\] are missing from prepare.source_label_map"):
        prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                      str(tmp_path / "source"))


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.25, 18), (1.0, 72)])
def test_target_labelled_hides_the_rest_of_the_target_labels(tmp_path: Path, raw_data, fraction: float,
                                                             expected: int) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    _source(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"prepare": {"target_labelled": fraction}})
    summary = prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                            str(tmp_path / "source"))
    train = pd.read_csv(tmp_path / "prepared" / "train.csv", keep_default_na=False)
    assert summary["train_size"] == 72 and (train["label"] != "").sum() == summary["train_labelled"] == expected
    assert (pd.read_csv(tmp_path / "prepared" / "validation.csv")["label"] != "").all()


def test_hidden_target_labels_need_a_source_domain(tmp_path: Path, raw_data) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no source here")
    params = write_params(tmp_path / "params.yaml", {"prepare": {"target_labelled": 0.0}})
    with pytest.raises(DataError, match="prepare.target_labelled needs a labelled source domain"):
        prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                      str(tmp_path / "empty"))


def test_validation_from_the_source_domain(tmp_path: Path, raw_data) -> None:
    from crosstune.pipeline.prepare import prepare_stage

    _source(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"prepare": {"validation_domain": "source",
                                                                "target_labelled": 0.0}})
    summary = prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                            str(tmp_path / "source"))
    validation = pd.read_csv(tmp_path / "prepared" / "validation.csv")
    assert validation["text"].str.startswith("gardening").all()
    assert summary["source_size"] + summary["validation_size"] == 60 and summary["train_size"] == 90


def _adaptation_run(tmp_path: Path, raw_data, finetune: dict, prepare: dict | None = None,
                    evaluate: dict | None = None) -> dict:
    """prepare (with a source) -> backbone -> attach -> cache -> finetune -> evaluate on tiny-bert."""
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.prepare import prepare_stage
    from crosstune.pipeline.scratch import scratch_stage

    _source(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"prepare": {"target_labelled": 0.0, **(prepare or {})},
                                                     "freeze": {"depth": 1}, "finetune": finetune,
                                                     "evaluate": evaluate or {}})
    paths = {name: str(tmp_path / name) for name in ("prepared", "backbone", "encoded", "initial", "features",
                                                      "finetuned")}
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), paths["prepared"], str(params),
                  str(tmp_path / "source"))
    backbone_stage(paths["prepared"], paths["backbone"], paths["encoded"], str(tmp_path / "backbone.json"),
                   str(tmp_path / "selection.json"), str(tmp_path / "selection.csv"), str(params))
    attach_head_stage(paths["backbone"], paths["prepared"], paths["initial"], str(tmp_path / "freeze.json"),
                      str(params))
    cache = cache_stage(paths["initial"], paths["encoded"], paths["features"], str(params))
    finetune_stage(paths["initial"], paths["encoded"], paths["finetuned"], str(tmp_path / "live"), str(params),
                   paths["features"])
    scratch_stage(paths["initial"], paths["encoded"], str(tmp_path / "scratch"), str(params))
    metrics = evaluate_stage(paths["finetuned"], paths["encoded"], paths["prepared"], str(tmp_path / "eval.json"),
                             str(tmp_path / "predictions.csv"), str(tmp_path / "misclassified.png"), str(params),
                             paths["initial"], str(tmp_path / "scratch"))
    return {"cache": cache, "metrics": metrics, "paths": paths}


@pytest.mark.parametrize("method", ["none", "dann", "cdan", "coral", "mmd"])
def test_every_adaptation_method_trains_through_the_pipeline(tmp_path: Path, raw_data, method: str) -> None:
    run = _adaptation_run(tmp_path, raw_data, {"adaptation": method, "epochs": 2})
    reason = run["cache"]["reason"]
    assert run["cache"]["cached"] is False
    assert (f"finetune.adaptation: {method}" in reason) if method != "none" else ("source domain" in reason)
    metrics = run["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 0.0 <= metrics["proxy_a_distance_before"] <= 2.0 and "proxy_a_distance_after" in metrics
    encoded = json.loads((Path(run["paths"]["encoded"]) / "meta.json").read_text())
    assert encoded["source"] is True


def test_evaluate_extracts_each_feature_set_once_for_probe_and_domain_gap(tmp_path: Path, raw_data,
                                                                         monkeypatch) -> None:
    """The guard's linear probe and the domain gap both read the pretrained model's train and source
    features: one pass over each split per model, not one per consumer."""
    import crosstune.evaluation.features as features

    passes: list[tuple[int, int]] = []
    extract = features.pooled_features

    def counting(model, split, batching, device):
        passes.append((id(model), id(split)))
        return extract(model, split, batching, device)

    monkeypatch.setattr(features, "pooled_features", counting)
    metrics = _adaptation_run(tmp_path, raw_data, {"epochs": 1}, evaluate={"guard": "report"})["metrics"]
    assert "probe_f1_macro" in metrics and "proxy_a_distance_before" in metrics
    assert len(passes) == len(set(passes)) == 5  # pretrained: train, source, test; fine-tuned: source, train


def test_adaptation_without_a_source_domain_is_a_config_error(attached) -> None:
    from crosstune.errors import ConfigError
    from crosstune.pipeline.finetune import finetune_stage

    params = write_params(attached["params"], {"finetune": {"adaptation": "dann"}})
    with pytest.raises(ConfigError, match="needs a labelled source domain"):
        finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(attached["initial"].parent / "out"),
                       str(attached["initial"].parent / "live"), str(params))


def test_cache_plan_refuses_adaptation_and_source_training() -> None:
    from crosstune.config import AugmentParams, CacheParams, FinetuneParams
    from crosstune.prefix_cache.plan import plan_cache

    config = {"modality": "text", "freeze": {"depth": 1}, "backbone_config": {"num_hidden_layers": 2}}
    plain = plan_cache(config, CacheParams(), AugmentParams(), FinetuneParams())
    assert plain.cached
    adapting = plan_cache(config, CacheParams(), AugmentParams(), FinetuneParams(adaptation="coral"))
    assert not adapting.cached and "finetune.adaptation: coral" in adapting.reason
    with_source = plan_cache(config, CacheParams(), AugmentParams(), FinetuneParams(), has_source=True)
    assert not with_source.cached and "source domain" in with_source.reason


def test_domain_streams_pair_every_source_batch_with_a_target_batch() -> None:
    from crosstune.data.batching import TextBatching
    from crosstune.data.text_encoding import EncodedSplit
    from crosstune.training.domain_streams import build_streams

    def split(size: int, label: int) -> EncodedSplit:
        return EncodedSplit(torch.ones((size, 4), dtype=torch.int32), torch.full((size,), 4),
                            torch.full((size,), label))

    streams = build_streams(split(10, 0), split(25, -1), TextBatching(4, 8), 4, adapting=True)
    pairs = list(streams.epoch(torch.Generator().manual_seed(0)))
    assert len(pairs) == streams.batches_per_epoch == 7  # the longer (target) stream sets the epoch
    assert all(target is not None for _, target in pairs)
    assert sum(len(source.indices) for source, _ in pairs) == 24  # 4+4+2, restarted: 4+4+2, 4
    alone = build_streams(split(10, 0), split(25, -1), TextBatching(4, 8), 4, adapting=False)
    assert alone.target is None  # source-only: no labelled target row, no adaptation loss
    assert alone.batches_per_epoch == 7  # the same number of steps as the adaptation run
    few_labels = split(25, -1)
    few_labels.labels[:3] = 2
    semi = build_streams(split(10, 0), few_labels, TextBatching(4, 8), 4, adapting=False)
    assert semi.target is few_labels  # semi-supervised: the kept target labels train too


def test_semi_supervised_adaptation_runs_with_a_few_target_labels(tmp_path: Path, raw_data) -> None:
    run = _adaptation_run(tmp_path, raw_data, {"adaptation": "coral", "epochs": 1}, {"target_labelled": 0.1})
    summary = json.loads((Path(run["paths"]["prepared"]) / "summary.json").read_text())
    assert summary["train_labelled"] == 7 and "proxy_a_distance_after" in run["metrics"]


def test_text_augmentation_keeps_special_tokens_and_is_seeded() -> None:
    from crosstune.config import TextAugmentParams
    from crosstune.data.text_augmentation import augment_split, augment_tokens
    from crosstune.data.text_encoding import EncodedSplit

    class Tokenizer:
        mask_token_id, unk_token_id, pad_token_id = 103, 100, 0

    ids = torch.tensor([[101, 5, 6, 7, 8, 9, 102, 0], [101, 11, 12, 102, 0, 0, 0, 0]], dtype=torch.int32)
    split = EncodedSplit(ids, torch.tensor([7, 4]), torch.tensor([1, -1]))
    params = TextAugmentParams(copies=2, swap=0.3, delete=0.2, mask=0.2)
    out = augment_split(split, params, Tokenizer(), seed=3)
    assert len(out) == 6 and out.labels.tolist() == [1, -1, 1, -1, 1, -1]
    assert torch.equal(out.input_ids[:2, :8], ids)
    for row in range(2, 6):
        tokens = out.input_ids[row, : int(out.lengths[row])].tolist()
        assert tokens[0] == 101 and tokens[-1] == 102 and len(tokens) >= 3
    again = augment_split(split, params, Tokenizer(), seed=3)
    assert torch.equal(out.input_ids, again.input_ids)
    generator = torch.Generator().manual_seed(0)
    assert augment_tokens(list(range(20)), TextAugmentParams(delete=0.0, swap=0.0, mask=1.0), 103,
                          generator) == [103] * 20
    assert sorted(augment_tokens(list(range(20)), TextAugmentParams(delete=0.0, swap=0.5, mask=0.0), 103,
                                 generator)) == list(range(20))
    assert len(augment_tokens(list(range(200)), TextAugmentParams(delete=0.5, swap=0.0, mask=0.0), 103,
                              generator)) < 150


def test_backbone_stage_adds_augmented_copies_to_the_named_splits(tmp_path: Path, raw_data) -> None:
    from safetensors.torch import load_file

    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    _source(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"text_augment": {"copies": 2, "splits": ["source"]}})
    summary = prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(tmp_path / "prepared"), str(params),
                            str(tmp_path / "source"))
    backbone_stage(str(tmp_path / "prepared"), str(tmp_path / "backbone"), str(tmp_path / "encoded"),
                   str(tmp_path / "b.json"), str(tmp_path / "s.json"), str(tmp_path / "s.csv"), str(params))
    sizes = {name: len(load_file(str(tmp_path / "encoded" / f"{name}.safetensors"))["lengths"])
             for name in ("train", "source", "validation")}
    assert sizes == {"train": summary["train_size"], "source": 3 * summary["source_size"],
                     "validation": summary["validation_size"]}
