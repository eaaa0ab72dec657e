"""Transfer-aware fine-tuning: unfreezing schedules, layer-wise rates, STLR, L2-SP, BSS, LoRA, label
smoothing and training hygiene each do what they say."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from crosstune.config import FinetuneParams, load_section
from crosstune.data.text_encoding import load_split
from crosstune.freezing.gradual import GradualUnfreezing
from crosstune.freezing.policy import apply_freeze
from crosstune.methods.regularizers import (
    L2SP,
    BatchSpectralShrinkage,
    build_regularizers,
)
from crosstune.model.transfer_model import load_transfer_model
from crosstune.training.loop import autocast_dtype, train
from crosstune.training.losses import build_loss
from crosstune.training.optimization import (
    build_optimizer,
    build_scheduler,
    parameter_groups,
    stlr_factor,
)


def _model(paths: dict[str, Path], depth: object = 0):
    model, _ = load_transfer_model(paths["initial"])
    apply_freeze(model, depth)
    return model


def _splits(paths: dict[str, Path]):
    return (load_split(paths["encoded"] / "train.safetensors"),
            load_split(paths["encoded"] / "validation.safetensors"))


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
    model = _model(attached)
    unfreezing = GradualUnfreezing(model, every=3)
    expected = {0: {"head"}, 2: {"head"}, 3: {"head", "block1"}, 6: {"head", "block1", "block0"},
                9: {"head", "block1", "block0", "embeddings"}, 100: {"head", "block1", "block0", "embeddings"}}
    for step, units in expected.items():
        unfreezing.apply(step)
        assert _trainable_units(model) == units, step
    assert unfreezing.num_stages == 4


def test_gradual_unfreezing_never_touches_what_the_policy_froze(attached: dict[str, Path]) -> None:
    model = _model(attached, depth=1)
    unfreezing = GradualUnfreezing(model, every=1)
    unfreezing.apply(0)
    assert _trainable_units(model) == {"head"}
    for step in (1, 5, 50):
        unfreezing.apply(step)
        assert _trainable_units(model) == {"head", "block1"}


def test_gradual_unfreezing_in_training_leaves_lower_blocks_at_their_start(attached: dict[str, Path]) -> None:
    """Per-epoch unfreezing over 2 epochs: epoch 1 trains the head, epoch 2 adds the top block only."""
    model = _model(attached)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    params = dataclasses.replace(load_section("finetune", attached["params"]), epochs=2, unfreeze="gradual",
                                 select_metric="loss", lr=1e-2)
    train_split, validation_split = _splits(attached)
    result = train(model, train_split, validation_split, params, seed=0, device="cpu")
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(name.startswith("backbone.encoder.layer.1.") for name in changed) or result.best_epoch == 1
    assert not any(name.startswith(("backbone.encoder.layer.0.", "backbone.embeddings.")) for name in changed)
    assert any(name.startswith("head.") for name in changed)


def test_layer_wise_decay_and_head_rate_give_each_group_its_rate(attached: dict[str, Path]) -> None:
    model = _model(attached)
    params = FinetuneParams(lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    groups = parameter_groups(model, params)
    rate = {id(parameter): group["lr"] for group in groups for parameter in group["params"]}
    for name, parameter in model.named_parameters():
        if name.startswith("head."):
            expected = 1e-2
        elif name.startswith("backbone.encoder.layer.1."):
            expected = 1e-3
        elif name.startswith("backbone.encoder.layer.0."):
            expected = 5e-4
        else:
            assert name.startswith("backbone.embeddings."), name
            expected = 2.5e-4
        assert rate[id(parameter)] == pytest.approx(expected), name
    optimizer = build_optimizer(model, params)
    build_scheduler(optimizer, dataclasses.replace(params, scheduler="constant", warmup_ratio=0.0), 10)
    assert sorted({group["lr"] for group in optimizer.param_groups}) == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-2])


def test_l2sp_switches_weight_decay_off_for_the_backbone_only(attached: dict[str, Path]) -> None:
    model = _model(attached)
    groups = parameter_groups(model, FinetuneParams(weight_decay=0.1, l2sp=0.01))
    head_ids = {id(p) for p in model.head.parameters()}
    decayed = [group for group in groups if group["weight_decay"] > 0]
    backbone = [group for group in groups if not all(id(p) in head_ids for p in group["params"])]
    assert decayed and all(id(p) in head_ids for group in decayed for p in group["params"])
    assert backbone and all(group["weight_decay"] == 0 for group in backbone)


def test_slanted_triangular_rises_then_decays() -> None:
    total, cut, ratio = 100, 10, 32.0
    factors = [stlr_factor(step, cut, total, ratio) for step in range(total + 1)]
    assert factors[0] == pytest.approx(1 / ratio)
    assert factors[cut] == pytest.approx(1.0)
    assert factors[total] == pytest.approx(1 / ratio)
    assert all(a < b for a, b in zip(factors[:cut], factors[1 : cut + 1]))
    assert all(a > b for a, b in zip(factors[cut:total], factors[cut + 1 :]))


def test_l2sp_is_zero_at_the_pretrained_weights_and_grows_with_distance(attached: dict[str, Path]) -> None:
    model = _model(attached)
    penalty = L2SP(model)
    features = torch.zeros(2, 4)
    assert float(penalty(model, features).detach()) == 0.0
    values = []
    for scale in (1e-3, 2e-3):
        with torch.no_grad():
            for name, parameter in model.backbone.named_parameters():
                parameter.copy_(penalty.reference[name] + scale)
        values.append(float(penalty(model, features).detach()))
    count = sum(p.numel() for p in model.backbone.parameters())
    assert values[0] == pytest.approx(count * 1e-6, rel=1e-3)
    assert values[1] == pytest.approx(4 * values[0], rel=1e-3)
    with torch.no_grad():  # the head has no starting point: moving it costs nothing
        for parameter in model.head.parameters():
            parameter.add_(1.0)
    assert float(penalty(model, features).detach()) == pytest.approx(values[1], rel=1e-6)


def test_bss_shrinks_the_smallest_singular_values() -> None:
    torch.manual_seed(0)
    base = torch.randn(16, 8) @ torch.diag(torch.tensor([5.0, 4, 3, 2, 1, 0.8, 0.6, 0.5]))
    features = torch.nn.Parameter(base.clone())
    bss = BatchSpectralShrinkage(k=2)
    optimizer = torch.optim.SGD([features], lr=0.05)
    before = torch.linalg.svdvals(base)
    for _ in range(50):
        optimizer.zero_grad()
        bss(None, features).backward()
        optimizer.step()
    after = torch.linalg.svdvals(features.detach())
    assert float(bss(None, features.detach())) < float(bss(None, base)) * 0.5
    assert torch.all(after[-2:] < before[-2:] * 0.7)
    torch.testing.assert_close(after[:3], before[:3], rtol=1e-4, atol=1e-4)


def test_regularizers_are_built_from_their_weights(attached: dict[str, Path]) -> None:
    model = _model(attached)
    assert build_regularizers(model, FinetuneParams()) == []
    names = [name for name, _, _ in build_regularizers(model, FinetuneParams(l2sp=0.1, bss=0.01))]
    assert names == ["bss", "l2sp"]


def test_training_with_every_regularizer_and_schedule_stays_finite(attached: dict[str, Path]) -> None:
    model = _model(attached)
    params = dataclasses.replace(load_section("finetune", attached["params"]), epochs=2, l2sp=0.01, bss=0.001,
                                 label_smoothing=0.1, layer_decay=0.8, head_lr=1e-2, scheduler="slanted_triangular",
                                 unfreeze="gradual", unfreeze_every=2, max_grad_norm=1.0, grad_accumulation=2)
    train_split, validation_split = _splits(attached)
    result = train(model, train_split, validation_split, params, seed=0, device="cpu")
    assert result.steps == 2 * math.ceil(math.ceil(len(train_split) / params.batch_size) / 2)
    assert all(math.isfinite(value) for value in result.best_metrics.values())


def test_label_smoothing_penalises_confident_correct_predictions() -> None:
    logits, targets = torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([0])
    plain = build_loss("cross_entropy", "classification", None)(logits, targets)
    smoothed = build_loss("cross_entropy", "classification", None, 0.2)(logits, targets)
    assert float(smoothed) > float(plain) + 0.5
    with pytest.raises(ValueError, match="label_smoothing"):
        build_loss("mse", "regression", None, 0.1)


def test_early_stopping_stops_after_patience_epochs(attached: dict[str, Path]) -> None:
    model = _model(attached)
    params = dataclasses.replace(load_section("finetune", attached["params"]), epochs=6, lr=1e-12, head_lr=1e-12,
                                 early_stopping_patience=2, select_metric="loss")
    train_split, validation_split = _splits(attached)
    result = train(model, train_split, validation_split, params, seed=0, device="cpu")
    assert result.stopped_early
    assert len(result.history) < 6


def test_gradient_clipping_bounds_each_update(attached: dict[str, Path]) -> None:
    model = _model(attached)
    head = model.head
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    before = torch.cat([p.detach().flatten().clone() for p in head.parameters()])
    params = dataclasses.replace(load_section("finetune", attached["params"]), epochs=1, optimizer="sgd", momentum=0.0,
                                 lr=1.0, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0, max_grad_norm=1e-3,
                                 select_metric="loss")
    train_split, validation_split = _splits(attached)
    result = train(model, train_split, validation_split, params, seed=0, device="cpu")
    moved = torch.cat([p.detach().flatten() for p in head.parameters()]) - before
    assert 0 < float(moved.norm()) <= 1e-3 * result.steps + 1e-7


def test_mixed_precision_is_off_on_cpu() -> None:
    assert autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is None
    assert autocast_dtype("off", "cuda") is None


def test_lora_trains_only_adapters_and_head_and_merges_back(attached: dict[str, Path], tmp_path: Path) -> None:
    from crosstune.freezing.lora import apply_lora, merge_lora
    from crosstune.model.transfer_model import save_transfer_model

    model = _model(attached)
    original = {name: value.clone() for name, value in model.state_dict().items()}
    count = apply_lora(model, r=2, alpha=4.0, dropout=0.0, targets=["query", "value"], seed=0)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert count > 0 and trainable
    assert all("lora_" in name or name.startswith("head.") for name in trainable)
    assert any(name.startswith("head.") for name in trainable)
    params = dataclasses.replace(load_section("finetune", attached["params"]), epochs=1, lr=1e-2,
                                 select_metric="loss")
    train_split, validation_split = _splits(attached)
    train(model, train_split, validation_split, params, seed=0, device="cpu")
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
        apply_lora(_model(attached), r=2, alpha=4.0, dropout=0.0, targets=["q_proj"], seed=0)


def test_finetune_params_reject_bad_values() -> None:
    from crosstune.errors import ConfigError

    with pytest.raises(ConfigError, match="finetune.unfreeze"):
        FinetuneParams(unfreeze="sometimes")
    with pytest.raises(ConfigError, match="finetune.layer_decay"):
        FinetuneParams(layer_decay=0.0)
    with pytest.raises(ConfigError, match="num_processes"):
        FinetuneParams(num_processes=2, unfreeze="gradual")


def test_zero_processes_means_one_per_gpu() -> None:
    from crosstune.training.distributed import resolve_num_processes

    assert resolve_num_processes(3) == 3
    assert resolve_num_processes(0) == max(torch.cuda.device_count(), 1)
