"""crosstune.freezing: freeze policies are exact, frozen modules stay in eval mode, gradual unfreezing and LoRA."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import (
    attached_model,
    audio_model,
    fit,
    image_model,
    load_splits,
    tiny_model,
    token_batch,
)

from crosstune.backbones.registry import backbone_names
from crosstune.backbones.text import transformer_blocks
from crosstune.config import FinetuneParams, load_section
from crosstune.errors import ArtifactError, ConfigError
from crosstune.freezing.gradual import GradualUnfreezing
from crosstune.freezing.policy import apply_freeze, set_train_mode
from crosstune.transfer_model.storage import load_transfer_model, save_transfer_model


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
    input_ids, mask = token_batch(tokenizer)
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


def _trainable_units(model) -> set[str]:
    """Which of head / block0 / block1 / embeddings have trainable parameters."""
    units = set()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            if name.startswith("head."):
                units.add("head")
            elif ".embeddings." in f".{name}":
                units.add("embeddings")
            else:
                units.add("block" + name.split("encoder.layer.")[1].split(".")[0])
    return units


def test_gradual_unfreezing_unlocks_one_block_at_a_time_from_the_top(attached: dict[str, Path]) -> None:
    model = attached_model(attached)
    unfreezing = GradualUnfreezing(model, every=3)
    expected = {0: {"head"}, 2: {"head"}, 3: {"head", "block1"}, 6: {"head", "block1", "block0"},
                9: {"head", "block1", "block0", "embeddings"}, 100: {"head", "block1", "block0", "embeddings"}}
    for step, units in expected.items():
        unfreezing.apply(step)
        assert _trainable_units(model) == units, step
    assert unfreezing.num_stages == 4


def test_gradual_unfreezing_never_touches_what_the_policy_froze(attached: dict[str, Path]) -> None:
    model = attached_model(attached, depth=1)
    unfreezing = GradualUnfreezing(model, every=1)
    unfreezing.apply(0)
    assert _trainable_units(model) == {"head"}
    for step in (1, 5, 50):
        unfreezing.apply(step)
        assert _trainable_units(model) == {"head", "block1"}


def test_gradual_unfreezing_in_training_leaves_lower_blocks_at_their_start(attached: dict[str, Path]) -> None:
    """Per-epoch unfreezing over 2 epochs: epoch 1 trains the head, epoch 2 adds the top block only."""
    model = attached_model(attached)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=2, unfreeze="gradual",
                                 select_metric="loss", lr=1e-2)
    train_split, validation_split = load_splits(attached)
    result = fit(model, train_split, validation_split, params)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(name.startswith("backbone.encoder.layer.1.") for name in changed) or result.best_epoch == 1
    assert not any(name.startswith(("backbone.encoder.layer.0.", "backbone.embeddings.")) for name in changed)
    assert any(name.startswith("head.") for name in changed)


def test_lora_trains_only_adapters_and_head_and_merges_back(attached: dict[str, Path], tmp_path: Path) -> None:
    from crosstune.freezing.lora import apply_lora, merge_lora

    model = attached_model(attached)
    original = {name: value.clone() for name, value in model.state_dict().items()}
    count = apply_lora(model, r=2, alpha=4.0, dropout=0.0, targets=["query", "value"], seed=0)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert count > 0 and trainable
    assert all("lora_" in name or name.startswith("head.") for name in trainable)
    assert any(name.startswith("head.") for name in trainable)
    params = dataclasses.replace(load_section(FinetuneParams, attached["params"]), epochs=1, lr=1e-2,
                                 select_metric="loss")
    train_split, validation_split = load_splits(attached)
    fit(model, train_split, validation_split, params)
    base_weights = {name.replace(".base_layer", ""): value for name, value in model.state_dict().items()
                    if "lora_" not in name}
    for name, value in base_weights.items():
        if not name.startswith("head."):
            assert torch.equal(value, original[name]), name  # the pretrained weights never moved
    batch = next(iter(__import__("crosstune.data.batching", fromlist=["TextBatching"]).TextBatching(4, 32)
                      .evaluate(validation_split)))
    model.eval()
    with torch.no_grad():
        with_adapters = model(**batch.inputs)
    assert merge_lora(model) == 4
    assert set(model.state_dict()) == set(original)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch.inputs), with_adapters, atol=1e-5, rtol=1e-4)
    save_transfer_model(model, tmp_path / "merged")
    reloaded, _ = load_transfer_model(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch.inputs), with_adapters, atol=1e-5, rtol=1e-4)


def test_lora_names_the_valid_targets(attached: dict[str, Path]) -> None:
    from crosstune.errors import ConfigError
    from crosstune.freezing.lora import apply_lora

    with pytest.raises(ConfigError, match="query"):
        apply_lora(attached_model(attached), r=2, alpha=4.0, dropout=0.0, targets=["q_proj"], seed=0)


def _batchnorms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name", backbone_names("image"))
def test_trainable_counts_at_each_depth(name: str) -> None:
    model = image_model(name)
    blocks, stem = model.block_modules(), model.stem_modules()
    head = sum(p.numel() for p in model.head.parameters())
    total = sum(p.numel() for p in model.parameters())

    def count(modules: list[torch.nn.Module]) -> int:
        return sum(p.numel() for module in modules for p in module.parameters())

    assert apply_freeze(model, 0).trainable_parameters == total
    first = apply_freeze(model, 1)
    assert first.frozen_parameters == count(stem) + count(blocks[0])
    assert apply_freeze(model, len(blocks)).frozen_parameters == count(stem) + count([m for b in blocks for m in b])
    assert apply_freeze(model, "all").trainable_parameters == head


@pytest.mark.parametrize("train_batchnorm", [False, True])
def test_frozen_batchnorm_statistics_do_not_move(train_batchnorm: bool) -> None:
    model = image_model("tiny-cnn")
    apply_freeze(model, 2, train_batchnorm=train_batchnorm)
    frozen_bns = _batchnorms(torch.nn.ModuleList(model.stem_modules() + [m for b in model.block_modules()[:2] for m in b]))
    trained_bns = _batchnorms(torch.nn.ModuleList([m for b in model.block_modules()[2:] for m in b]))
    before = [bn.running_mean.clone() for bn in frozen_bns + trained_bns]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    set_train_mode(model)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32) * 3 + 1), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = [bn.running_mean for bn in frozen_bns + trained_bns]
    for index, bn in enumerate(frozen_bns):
        moved = not torch.equal(before[index], after[index])
        assert moved == train_batchnorm, "frozen BN statistics must stay unless freeze.train_batchnorm"
        assert bn.training == train_batchnorm
    for index in range(len(frozen_bns), len(before)):
        assert not torch.equal(before[index], after[index]), "trainable blocks' BN statistics should update"


@pytest.mark.parametrize("name", backbone_names("audio"))
def test_audio_freezing_counts_stem_and_blocks_exactly(name: str) -> None:
    model = audio_model(name)
    blocks, stem = model.block_modules(), model.stem_modules()
    total = sum(p.numel() for p in model.parameters())

    def count(modules: list[torch.nn.Module]) -> int:
        return sum(p.numel() for module in modules for p in module.parameters())

    assert apply_freeze(model, 0).trainable_parameters == total
    assert apply_freeze(model, 1).frozen_parameters == count(stem) + count(blocks[0])
    assert apply_freeze(model, len(blocks)).frozen_parameters == count(stem) + count([m for b in blocks for m in b])
    assert apply_freeze(model, "all").trainable_parameters == sum(p.numel() for p in model.head.parameters())


# freeze.depth: auto (crosstune.freezing.auto_depth): the rule, and the attach-head stage applying and reporting it.

@pytest.mark.parametrize(("scores", "expected"), [
    ([-0.46, -0.458, -0.457, -0.44, -0.425, -0.438, -0.487], 0),  # the blocks barely help: fine-tune everything
    ([-0.32, 0.46, 0.57, 0.58, 0.576], 1),  # the first block brings most of the gain: freeze it
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 3),  # a steady rise: freeze until half the gain, fine-tune the rest
    ([0.0, None, 0.5, 0.2], 2),  # a non-finite block is never chosen
    ([None, 0.3], 0),
])
def test_recommended_depth_follows_the_gain_over_the_stem(scores, expected) -> None:
    from crosstune.freezing.auto_depth import recommend_depth

    recommendation = recommend_depth(scores)
    assert recommendation.depth == expected, recommendation.reason
    metrics = recommendation.as_metrics()
    assert metrics["depth_recommended"] == expected and metrics["block_0_logme"] == scores[0]


def test_auto_depth_is_applied_saved_as_a_number_and_reported(tmp_path, attached) -> None:
    """attach-head with freeze.depth: auto freezes the recommended depth, saves that number in config.json (later
    stages never see "auto"), and reports the per-block scores, the recommendation and the request; a backbone
    directory without block scores (saved before they existed) is refused with the fix."""
    import json
    import shutil

    from conftest import write_params

    from crosstune.freezing.auto_depth import read_block_scores, recommend_depth
    from crosstune.pipeline.attach_head import attach_head_stage

    blocks = read_block_scores(attached["backbone"])
    assert blocks is not None and len(blocks["scores"]) == 3  # the embeddings' output + 2 tiny-bert blocks
    expected = recommend_depth(blocks["scores"], blocks["score"]).depth
    params = write_params(tmp_path / "auto.yaml", {"freeze": {"depth": "auto"}})
    report = attach_head_stage(str(attached["backbone"]), str(attached["prepared"]), str(tmp_path / "auto-model"),
                               str(tmp_path / "freeze.json"), str(params), str(tmp_path / "blocks.csv"))
    saved = json.loads((tmp_path / "auto-model" / "config.json").read_text())
    assert saved["freeze"]["depth"] == expected == report["depth"] == report["depth_recommended"]
    assert report["depth_requested"] == "auto" and report["frozen_blocks"] == expected
    table = (tmp_path / "blocks.csv").read_text().splitlines()
    assert table[0] == "block,score,score_name,frozen" and len(table) == 4
    assert [int(row.split(",")[-1]) for row in table[1:]] == [int(0 < expected and index <= expected)
                                                             for index in range(3)]
    shutil.copytree(attached["backbone"], tmp_path / "old-backbone")
    (tmp_path / "old-backbone" / "block_scores.json").unlink()
    with pytest.raises(ArtifactError, match=r"block_scores.json: missing, and freeze.depth: auto reads it.*dvc repro "
                                            r"-f backbone"):
        attach_head_stage(str(tmp_path / "old-backbone"), str(attached["prepared"]), str(tmp_path / "other"),
                          str(tmp_path / "freeze2.json"), str(params))
