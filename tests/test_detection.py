"""Object detection: the three annotation formats read alike, and every bad input named with its fix."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT, make_box_images, write_boxes

from crosstune.detection.annotations import annotations_frame, class_names, parse_boxes_json
from crosstune.detection.formats import annotation_format, read_annotations
from crosstune.errors import DataError

BCCD = REPO_ROOT / "data" / "bccd"


def _by_name(images):
    return {item.image.name: [[*(round(v, 6) for v in box.corners()), box.label] for box in item.boxes]
            for item in images}


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_each_format_reads_the_boxes_it_was_written_with(tmp_path: Path, fmt: str) -> None:
    images = make_box_images(4, seed=3)
    path = write_boxes(tmp_path / fmt, fmt, images)
    assert annotation_format(path) == fmt
    read, declared = read_annotations(path)
    assert declared == (None if fmt == "voc" else ["cell", "dot"])
    expected = {f"img_{i:03d}.png": [[float(v) for v in box[:4]] + [box[4]] for box in boxes]
                for i, (_, boxes) in enumerate(images)}
    assert _by_name(read) == expected
    assert all((item.width, item.height) == (96, 64) for item in read)


def test_the_prepared_frame_round_trips_the_boxes(tmp_path: Path) -> None:
    read, _ = read_annotations(write_boxes(tmp_path, "voc", make_box_images(3, seed=1)))
    frame = annotations_frame(read)
    assert list(frame.columns) == ["image", "width", "height", "label"]
    assert [parse_boxes_json(cell) for cell in frame["label"]] == [list(item.boxes) for item in read]
    assert class_names(read) == sorted({box.label for item in read for box in item.boxes})


def test_ultralytics_split_folders_and_data_yaml(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    write_boxes(root, "yolo", make_box_images(2, seed=2))
    (root / "images").rename(tmp_path / "train")
    (root / "images").mkdir()
    (tmp_path / "train").rename(root / "images" / "train")
    (root / "labels").rename(tmp_path / "labels_train")
    (root / "labels").mkdir()
    (tmp_path / "labels_train").rename(root / "labels" / "train")
    (root / "classes.txt").unlink()
    (root / "data.yaml").write_text("names: {0: cell, 1: dot}\n", encoding="utf-8")
    read, declared = read_annotations(root / "images" / "train")
    assert declared == ["cell", "dot"] and len(read) == 2


def test_bccd_has_two_zero_area_boxes_named_or_dropped_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    split = BCCD / "ImageSets" / "Main" / "test.txt"
    assert len(read_annotations(split)[0]) == 72  # the test split holds neither bad box
    with pytest.raises(DataError, match=r"BloodImage_00338\.xml: the RBC box \(504, 337, 504, 337\) has zero area"
                                        r".*prepare\.drop_bad_boxes: true"):
        read_annotations(BCCD / "ImageSets" / "Main" / "trainval.txt")
    with caplog.at_level(logging.WARNING):
        images, _ = read_annotations(BCCD / "ImageSets" / "Main" / "trainval.txt", drop_bad_boxes=True)
    assert "dropped 2 bad box(es): 2 zero area" in caplog.text
    assert len(images) == 292 and sum(len(item.boxes) for item in images) == 4888 - 945 - 2
    assert class_names(images) == ["Platelets", "RBC", "WBC"]


def _voc(tmp_path: Path) -> Path:
    return write_boxes(tmp_path / "voc", "voc", make_box_images(3, seed=5))


def _edit_xml(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_box_outside_the_image_is_named(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    xml = root / "Annotations" / "img_001.xml"
    text = xml.read_text(encoding="utf-8")
    start = text.index("<xmax>") + len("<xmax>")
    xml.write_text(text[:start] + "500" + text[text.index("</xmax>"):], encoding="utf-8")
    with pytest.raises(DataError, match=r"img_001\.xml: the \w+ box \(\d+, \d+, 500, \d+\) lies outside the 96x64 "
                                        r"image; fix or delete the box"):
        read_annotations(root)


def test_an_unknown_class_against_the_training_classes(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    with pytest.raises(DataError, match=r"has a class that is not in the class list \['cell'\]"):
        read_annotations(root, classes=["cell"])


def test_a_yolo_class_index_beyond_the_list(tmp_path: Path) -> None:
    root = write_boxes(tmp_path / "yolo", "yolo", make_box_images(2, seed=5))
    label = root / "labels" / "img_000.txt"
    label.write_text("7" + label.read_text(encoding="utf-8")[1:], encoding="utf-8")
    with pytest.raises(DataError, match=r"img_000\.txt: the #7 box .* not in the class list \['cell', 'dot'\]"):
        read_annotations(root)


def test_an_image_without_annotations_and_annotations_without_an_image(tmp_path: Path) -> None:
    root = _voc(tmp_path)
    shutil.copy(root / "JPEGImages" / "img_000.png", root / "JPEGImages" / "extra.png")
    with pytest.raises(DataError, match=r"1 image\(s\) without an annotation file .*first: extra\.png"):
        read_annotations(root)
    (root / "JPEGImages" / "extra.png").unlink()
    (root / "JPEGImages" / "img_002.png").unlink()
    with pytest.raises(DataError, match=r"img_002\.xml: its image .*img_002\.png does not exist"):
        read_annotations(root)
    yolo = write_boxes(tmp_path / "yolo", "yolo", make_box_images(2, seed=5))
    (yolo / "labels" / "img_001.txt").unlink()
    with pytest.raises(DataError, match=r"img_001\.png: no label file .*img_001\.txt; add one \(empty"):
        read_annotations(yolo)


def test_an_unreadable_image_is_named(tmp_path: Path) -> None:
    path = write_boxes(tmp_path / "coco", "coco", make_box_images(2, seed=5))
    (path.parent / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"img_001\.png: cannot be read as an image"):
        read_annotations(path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda data: data["annotations"][0].update(category_id=9), r"annotation 0 \(id 0\) has category_id 9, not one"),
    (lambda data: data["annotations"][0].update(image_id=99), r"points at image_id 99, which is not in images"),
    (lambda data: data.pop("categories"), r"not COCO JSON with images"),
])
def test_bad_coco_files_name_the_annotation(tmp_path: Path, edit, message: str) -> None:
    path = write_boxes(tmp_path / "coco", "coco", make_box_images(2, seed=5))
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_annotations(path)


def test_malformed_lines_and_files_are_named(tmp_path: Path) -> None:
    yolo = write_boxes(tmp_path / "yolo", "yolo", make_box_images(2, seed=5))
    (yolo / "labels" / "img_000.txt").write_text("0 0.5 0.5 0.2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"img_000\.txt, line 1: '0 0\.5 0\.5 0\.2' is not `class x_center"):
        read_annotations(yolo)
    voc = _voc(tmp_path)
    (voc / "Annotations" / "img_000.xml").write_text("<annotation><object>", encoding="utf-8")
    with pytest.raises(DataError, match=r"img_000\.xml: not valid XML"):
        read_annotations(voc)
    with pytest.raises(DataError, match=r"not a box-annotation layout"):
        read_annotations(tmp_path)


# The detector: torchvision's FCOS on the project's image backbones


def _tiny_detector(pretrained: bool = False, seed: int = 0):
    from crosstune.backbones.vision import build_vision_backbone
    from crosstune.detection.model import build_detector

    return build_detector(build_vision_backbone("tiny-cnn", "none", seed), 2, min_size=64, max_size=96,
                          fpn_channels=32, pretrained=pretrained, seed=seed)


def _tensors(images):
    import numpy as np
    import torch

    pictures = [torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 for image, _ in images]
    targets = [{"boxes": torch.tensor([box[:4] for box in boxes], dtype=torch.float32),
                "labels": torch.tensor([1 + ["cell", "dot"].index(box[4]) for box in boxes])} for _, boxes in images]
    return pictures, targets


def test_the_pyramid_reads_the_last_block_at_each_stride() -> None:
    from crosstune.backbones.vision import build_vision_backbone
    from crosstune.detection.model import pyramid_levels

    # EfficientNet-Lite0: blocks 4, 10 and 15 end strides 8, 16 and 32; conv_head (1x1 to 1280) is left out
    assert pyramid_levels(build_vision_backbone("efficientnet-lite0", "none", 0)) == [(5, 8, 40), (11, 16, 112),
                                                                                     (16, 32, 320)]
    assert pyramid_levels(build_vision_backbone("tiny-cnn", "none", 0)) == [(2, 8, 24), (3, 16, 32)]


def test_the_detector_trains_with_torchvisions_losses_and_returns_boxes_in_image_pixels() -> None:
    import torch

    model = _tiny_detector()
    pictures, targets = _tensors(make_box_images(3, seed=4))
    model.train()
    losses = model(pictures, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(value) for value in losses.values())
    assert model.backbone.fpn.inner_blocks[0][0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        detections = model(pictures)
    assert set(detections[0]) == {"boxes", "scores", "labels"}
    boxes = torch.cat([item["boxes"] for item in detections])
    assert boxes.numel() and float(boxes[:, 2].max()) <= 96 and float(boxes[:, 3].max()) <= 64


def test_a_pretrained_backbone_keeps_its_batchnorm_statistics_while_training() -> None:
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = _tiny_detector(pretrained=True)
    frozen = [module for module in model.backbone.backbone.modules() if isinstance(module, FrozenBatchNorm2d)]
    assert frozen and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.backbone.modules())
    before = [module.running_mean.clone() for module in frozen]
    pictures, targets = _tensors(make_box_images(2, seed=4))
    model.train()
    sum(model(pictures, targets).values()).backward()
    assert all(torch.equal(module.running_mean, old) for module, old in zip(frozen, before))


def test_flipping_twice_gives_back_the_boxes_exactly() -> None:
    import torch

    from crosstune.detection.augment import BoxAugmentation, augment, build_transform

    pictures, targets = _tensors(make_box_images(2, seed=6))
    flip = build_transform(BoxAugmentation(horizontal_flip=1.0, vertical_flip=1.0))
    generator = torch.Generator().manual_seed(0)
    for picture, target in zip(pictures, targets):
        once = augment(flip, picture, target["boxes"], target["labels"], generator)
        assert not torch.equal(once[1], target["boxes"])
        twice = augment(flip, *once, generator)
        assert torch.equal(twice[0], picture) and torch.equal(twice[1], target["boxes"])
        assert torch.equal(twice[2], target["labels"])


def test_augmentation_is_seeded_and_keeps_boxes_on_their_objects() -> None:
    import torch

    from crosstune.detection.augment import BoxAugmentation, augment, build_transform

    pictures, targets = _tensors(make_box_images(1, seed=7))
    transform = build_transform(BoxAugmentation(horizontal_flip=0.5, scale_min=0.7, scale_max=1.3, colour=0.2))
    runs = [augment(transform, pictures[0], targets[0]["boxes"], targets[0]["labels"],
                    torch.Generator().manual_seed(11)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    image, boxes, _ = augment(build_transform(BoxAugmentation(horizontal_flip=1.0)), pictures[0], targets[0]["boxes"],
                              targets[0]["labels"], torch.Generator().manual_seed(0))
    for box in boxes.round().int().tolist():  # the red or blue square is still under its flipped box
        patch = image[:, box[1]:box[3], box[0]:box[2]]
        assert float((patch[0] - patch[2]).abs().mean()) > 0.5


def test_scores_are_cocos_map_and_the_counting_error() -> None:
    import torch

    from crosstune.detection.scoring import detection_scores

    truth = [{"boxes": torch.tensor([[10.0, 10, 50, 50], [60, 10, 90, 40]]), "labels": torch.tensor([1, 2])},
             {"boxes": torch.tensor([[5.0, 5, 25, 25]]), "labels": torch.tensor([1])}]
    perfect = [{**item, "scores": torch.ones(len(item["labels"]))} for item in truth]
    scores = detection_scores(perfect, truth, ["cell", "dot"])
    assert scores["map"] == pytest.approx(1.0) and scores["map_50"] == pytest.approx(1.0)
    assert scores["count_mae"] == 0.0 and scores["per_class"]["cell"]["support"] == 2
    # the dot missed, one cell box shifted to IoU 0.67 (a hit up to 0.65, a miss above), an extra cell ranked first
    shifted = [{"boxes": torch.tensor([[18.0, 10, 58, 50]]), "scores": torch.tensor([0.9]),
                "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5, 25, 25], [70, 70, 90, 90]]), "scores": torch.tensor([0.8, 0.95]),
                "labels": torch.tensor([1, 1])}]
    scores = detection_scores(shifted, truth, ["cell", "dot"])
    assert scores["per_class"]["dot"] == {"ap": 0.0, "ap_50": 0.0, "count_mae": 0.5, "count_bias": -0.5,
                                          "support": 1}
    assert scores["per_class"]["cell"]["ap_50"] == pytest.approx(2 / 3, abs=0.01)  # precision 2/3 at every recall
    assert 0.0 < scores["per_class"]["cell"]["ap"] < scores["per_class"]["cell"]["ap_50"]
    assert scores["per_class"]["cell"]["count_mae"] == 0.5 and scores["per_class"]["cell"]["count_bias"] == 0.5
    assert scores["map_50"] == pytest.approx(scores["per_class"]["cell"]["ap_50"] / 2)


def test_per_class_ap_at_half_iou_equals_a_pass_at_that_threshold_alone() -> None:
    """One MeanAveragePrecision pass gives per-class AP@.5 (from its precision array) equal to torchmetrics'
    own per-class AP in a second pass at IoU 0.5 only; a class with no true box scores 0."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    from crosstune.detection.scoring import detection_scores

    generator = torch.Generator().manual_seed(0)

    def boxes(count: int) -> torch.Tensor:
        corner = torch.rand(count, 2, generator=generator) * 100
        return torch.cat([corner, corner + 5 + torch.rand(count, 2, generator=generator) * 30], 1)

    truth = [{"boxes": boxes(5), "labels": torch.randint(1, 4, (5,), generator=generator)} for _ in range(6)]
    found = [{"boxes": torch.cat([item["boxes"] + torch.randn(5, 4, generator=generator) * 3, boxes(3)]),
              "scores": torch.rand(8, generator=generator),
              "labels": torch.cat([item["labels"], torch.randint(1, 4, (3,), generator=generator)])} for item in truth]
    scores = detection_scores(found, truth, ["a", "b", "c", "never"])
    alone = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools",
                                 iou_thresholds=[0.5])
    alone.update(found, truth)
    reference = alone.compute()
    expected = dict(zip(reference["classes"].tolist(), reference["map_per_class"].tolist()))
    assert [scores["per_class"][name]["ap_50"] for name in "abc"] == pytest.approx([expected[1], expected[2],
                                                                                      expected[3]])
    assert scores["per_class"]["never"]["ap_50"] == 0.0 and 0 < min(expected.values())


def test_letterboxing_keeps_boxes_on_their_pixels_and_maps_back_exactly(tmp_path: Path) -> None:
    import torch

    from crosstune.detection.encoding import encode_split, fitted_canvas, targets, to_image_pixels

    images = make_box_images(2, seed=8) + make_box_images(1, seed=9, width=64, height=96)  # one portrait image
    read, _ = read_annotations(write_boxes(tmp_path, "voc", images))
    sizes = [(item.width, item.height) for item in read]
    canvas = fitted_canvas(sizes, 64)
    assert canvas == (64, 96)  # the widest aspect (3:2) at a short side of 64, a multiple of 32
    split = encode_split([str(item.image) for item in read], [item.boxes for item in read], ["cell", "dot"], canvas)
    assert split.images.shape == (3, 3, 64, 96) and split.boxes.shape == (3, 3, 4)
    assert split.scales.tolist() == [1.0, 1.0, 64 / 96]
    portrait = split.images[2]
    assert int(portrait[:, :, 43:].abs().sum()) == 0  # 64x96 scaled to 43x64: the rest of the canvas is padding
    for row, item in enumerate(read):
        batch = targets(split.boxes[row:row + 1], split.box_labels[row:row + 1])[0]
        assert batch["labels"].tolist() == [1 + ["cell", "dot"].index(box.label) for box in item.boxes]
        detections = [{"boxes": batch["boxes"], "scores": torch.ones(len(batch["labels"])), "labels": batch["labels"]}]
        back = to_image_pixels(detections, split.scales[row:row + 1])[0]["boxes"]
        assert torch.allclose(back, torch.tensor([box.corners() for box in item.boxes]), atol=1e-4)
        for box in batch["boxes"].round().int().tolist():  # the coloured square is under its scaled box
            patch = split.images[row, :, box[1] + 1:box[3] - 1, box[0] + 1:box[2] - 1].float()
            assert float((patch[0] - patch[2]).abs().mean()) > 100


# The detector behind the TransferModel interface: FCOS's own forward, taken apart at the backbone


def _detection_model(tmp_path: Path, pretrained: bool = True):
    from crosstune.backbones.vision import build_vision_backbone
    from crosstune.detection.encoding import encode_split, fitted_canvas
    from crosstune.detection.model import build_detector
    from crosstune.transfer_model.detection import DetectionModel

    read, _ = read_annotations(write_boxes(tmp_path, "voc", make_box_images(6, seed=12)))
    canvas = fitted_canvas([(item.width, item.height) for item in read], 64)
    split = encode_split([str(item.image) for item in read], [item.boxes for item in read], ["cell", "dot"], canvas)
    detector = build_detector(build_vision_backbone("tiny-cnn", "none", 0), 2, min_size=min(canvas),
                              max_size=max(canvas), fpn_channels=32, pretrained=pretrained)
    return DetectionModel(detector, {"task": "detection", "labels": ["cell", "dot"]}), split


def test_the_models_losses_and_detections_are_fcoss_own(tmp_path: Path) -> None:
    import torch

    from crosstune.detection.batching import collate
    from crosstune.detection.encoding import targets

    model, split = _detection_model(tmp_path)
    batch = collate(split, torch.arange(4))
    model.train()
    ours = model(**batch.inputs)
    theirs = model.detector(list(batch.inputs["images"]), targets(batch.inputs["boxes"], batch.inputs["box_labels"]))
    assert torch.allclose(ours, torch.stack([theirs[name] for name in model.loss_terms]), atol=1e-5)
    model.eval()
    with torch.no_grad():
        ours, theirs = model(batch.inputs["images"]), model.detector(list(batch.inputs["images"]))
    for mine, reference in zip(ours, theirs):
        assert torch.allclose(mine["boxes"], reference["boxes"], atol=1e-3) and torch.equal(mine["labels"],
                                                                                            reference["labels"])


@pytest.mark.parametrize("level", [1, 2, "all"])
def test_cached_prefix_gives_the_uncached_losses_and_detections(tmp_path: Path, level) -> None:
    import torch

    from crosstune.detection.batching import collate

    model, split = _detection_model(tmp_path)
    batch = collate(split, torch.arange(3))
    cached = model.prefix_outputs(level, batch.inputs["images"])
    assert "prefix" in cached and (level != "all" or set(cached) == {"prefix", "pyramid_2"})
    passthrough = {key: batch.inputs[key] for key in model.prefix_passthrough}
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            plain = model.forward_parts(None, **batch.inputs)
            from_cache = model.forward_parts(level, **cached, **passthrough)
        assert torch.allclose(plain[0], from_cache[0], atol=1e-5)
        if training:
            assert torch.allclose(plain[1], from_cache[1], atol=1e-5)
            losses = plain[1]
        else:
            assert all(torch.allclose(a["scores"], b["scores"], atol=1e-5) for a, b in zip(plain[1], from_cache[1]))
            detections = plain[1]
    with torch.no_grad():  # validation: both from one pass, in evaluation mode
        both = model.losses_and_detections(level, **cached, **passthrough)
    assert torch.allclose(both[0], losses, atol=1e-5)
    assert all(torch.allclose(a["scores"], b["scores"], atol=1e-5) for a, b in zip(both[1], detections))


def test_a_few_steps_on_augmented_batches_lower_the_detection_loss(tmp_path: Path) -> None:
    import torch

    from crosstune.detection.augment import BoxAugmentation
    from crosstune.detection.batching import DetectionBatching
    from crosstune.transfer_model.detection import SummedLossTerms

    model, split = _detection_model(tmp_path, pretrained=False)
    loss_fn = SummedLossTerms()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batching = DetectionBatching(3, BoxAugmentation(horizontal_flip=0.5, colour=0.1))
    generator = torch.Generator().manual_seed(0)
    model.train()
    torch.manual_seed(0)
    totals = []
    for _ in range(12):
        total = 0.0
        for batch in batching.train(split, generator):
            loss = loss_fn(model.forward_parts(None, **batch.inputs)[1], batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        totals.append(total)
    assert totals[-1] < 0.7 * totals[0], totals


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_saved_detector_loads_back_with_the_same_detections(tmp_path: Path, pretrained: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from crosstune.backbones.vision import build_vision_backbone
    from crosstune.detection.batching import collate
    from crosstune.detection.storage import DetectorSettings, build_detection_model, load_detector, save_detector
    from crosstune.errors import ArtifactError

    _, split = _detection_model(tmp_path / "data")
    settings = DetectorSettings(canvas=tuple(split.images.shape[-2:]), fpn_channels=32, frozen_batchnorm=pretrained)
    model = build_detection_model(build_vision_backbone("tiny-cnn", "none", 3), ["cell", "dot"], settings,
                                  {"task": "detection"}, seed=3)
    save_detector(model, tmp_path / "model")
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert model.settings.pyramid == ((2, 8, 24), (3, 16, 32))  # found once, when first built
    with monkeypatch.context() as patch:  # and read back from config.json: no probing pass on load
        patch.setattr("crosstune.detection.model.pyramid_levels", lambda *_: pytest.fail("probed again"))
        loaded, config = load_detector(tmp_path / "model")
    assert config["labels"] == ["cell", "dot"] and loaded.settings == model.settings
    assert config["detector"]["pyramid"] == [[2, 8, 24], [3, 16, 32]]
    images = collate(split, torch.arange(3)).inputs["images"]
    model.eval()
    with torch.no_grad():
        for ours, theirs in zip(model(images), loaded(images)):
            assert torch.equal(ours["boxes"], theirs["boxes"]) and torch.equal(ours["scores"], theirs["scores"])
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"model\.safetensors: truncated or corrupt"):
        load_detector(tmp_path / "model")


def test_matching_counts_missed_and_spurious_boxes_and_drawing_marks_them(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from crosstune.detection.drawing import MISSED, draw_boxes, image_errors, matched

    truth = {"boxes": torch.tensor([[10.0, 10, 30, 30], [50, 10, 70, 30]]), "labels": torch.tensor([1, 2])}
    found = {"boxes": torch.tensor([[11.0, 10, 31, 30], [50, 10, 70, 30], [40, 40, 60, 60]]),
             "scores": torch.tensor([0.9, 0.3, 0.8]), "labels": torch.tensor([1, 2, 1])}
    hit, used = matched(truth["boxes"], truth["labels"], found["boxes"], found["labels"])
    assert hit.tolist() == [True, True] and used.tolist() == [True, True, False]
    assert image_errors(truth, found, 0.5) == 2  # the dot's only prediction is below the threshold; one spurious
    wrong_class = dict(found, labels=torch.tensor([2, 2, 1]))
    assert matched(truth["boxes"], truth["labels"], wrong_class["boxes"], wrong_class["labels"])[0].tolist() == \
        [False, True]
    path = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (96, 64), (128, 128, 128)).save(path)
    pixels = np.asarray(draw_boxes(path, truth, found, ["cell", "dot"], 0.5))
    assert tuple(pixels[20, 50]) == MISSED  # the dot's box, drawn as missed: no confident prediction matched it
    assert tuple(pixels[50, 40]) != (128, 128, 128)  # the spurious prediction is drawn


# The task (registered once the stages build detectors): reading, class checks, scores


def test_the_task_prepares_one_row_per_image_and_checks_the_classes(tmp_path: Path) -> None:
    from crosstune.config import PrepareParams
    from crosstune.tasks.detection import Detection

    task = Detection()
    frame = task.read_examples(write_boxes(tmp_path / "train", "voc", make_box_images(5, seed=13)), PrepareParams())
    assert list(frame.columns) == ["image", "width", "height", "label"] and len(frame) == 5
    assert task.label_names(frame) == ["cell", "dot"]
    counts = task.label_counts(frame)
    assert sum(counts.values()) == sum(len(parse_boxes_json(cell)) for cell in frame["label"])
    with pytest.raises(DataError, match=r"too few training boxes of class\(es\) \{'cell': \d+, 'dot': \d+\}"):
        task.check_training_labels(frame, tmp_path, 100)
    with pytest.raises(DataError, match=r"has boxes of class\(es\) \['dot'\] that no training image has"):
        task.check_test_labels(frame, ["cell"], tmp_path / "test")
    task.check_test_labels(frame, ["cell", "dot"], tmp_path / "test")
    bccd = task.read_examples(BCCD / "ImageSets" / "Main" / "test.txt", PrepareParams())
    assert len(bccd) == 72 and task.label_counts(bccd) == {"Platelets": 69, "RBC": 805, "WBC": 71}


def test_the_backbone_stage_letterboxes_every_split_once(tmp_path: Path) -> None:
    import torch

    from crosstune.config import BackboneParams, PrepareParams
    from crosstune.detection.encoding import load_detection_split, save_and_encode
    from crosstune.tasks.detection import Detection

    task = Detection()
    frame = task.read_examples(write_boxes(tmp_path / "data", "voc", make_box_images(6, seed=14)), PrepareParams())
    splits = {"train": frame.iloc[:4], "validation": frame.iloc[4:5], "test": frame.iloc[5:], "source": frame.iloc[:0]}
    params = BackboneParams(name="tiny-cnn", weights="none", image_size=32)
    summary = save_and_encode(params, 0, splits, ["cell", "dot"], str(tmp_path / "backbone"),
                              str(tmp_path / "encoded"))
    assert summary["canvas"] == "32x64" and summary["train_images"] == 4  # 96x64 images at a short side of 32
    train = load_detection_split(tmp_path / "encoded" / "train.safetensors")
    assert train.images.shape == (4, 3, 32, 64) and train.scales.tolist() == [0.5] * 4
    expected = [parse_boxes_json(cell) for cell in splits["train"]["label"]]
    assert int((train.box_labels > 0).sum()) == sum(len(boxes) for boxes in expected) == summary["train_boxes"]
    assert torch.allclose(train.boxes[0, :len(expected[0])], torch.tensor([b.corners() for b in expected[0]]) / 2)
    assert len(load_detection_split(tmp_path / "encoded" / "source.safetensors")) == 0


def _saved_detector(tmp_path: Path):
    """A tiny detector saved as a model directory, with the split it was built for."""
    from crosstune.backbones.vision import build_vision_backbone
    from crosstune.detection.storage import DetectorSettings, build_detection_model, save_detector

    _, split = _detection_model(tmp_path / "data")
    settings = DetectorSettings(canvas=tuple(split.images.shape[-2:]), fpn_channels=32, score_threshold=0.0)
    model = build_detection_model(build_vision_backbone("tiny-cnn", "none", 5), ["cell", "dot"], settings,
                                  {"task": "detection", "freeze": {"depth": 0}, "head": {"type": "fcos"}}, seed=5)
    save_detector(model, tmp_path / "model")
    return model, split


def test_the_dense_outputs_and_their_post_processing_are_the_detectors_own(tmp_path: Path) -> None:
    """What the ONNX graph holds (class logits, boxes, centre-ness per location) plus torchvision's post-processing
    after it give exactly the detections of the whole PyTorch detector."""
    import torch

    from crosstune.detection.batching import collate

    model, split = _saved_detector(tmp_path)
    images = collate(split, torch.arange(4)).inputs["images"]
    model.eval()
    with torch.no_grad():
        whole = model(images)
        dense = model.dense_outputs(images)
        apart = model.detections_from_dense(dense, tuple(images.shape[-2:]))
    assert dense.shape[:2] == (4, sum(h * w for h, w in model.level_sizes(tuple(images.shape[-2:]))))
    assert dense.shape[2] == 3 + 5  # background, cell, dot; four box sides; centre-ness
    for ours, theirs in zip(whole, apart):
        assert len(ours["boxes"]) > 0
        assert torch.equal(ours["boxes"], theirs["boxes"]) and torch.equal(ours["labels"], theirs["labels"])


@pytest.mark.slow
def test_onnx_export_finds_the_boxes_pytorch_finds(tmp_path: Path) -> None:
    """`crosstune export --format onnx` of a detector: the graph checked against PyTorch at export, and `crosstune
    predict --onnx` on new images gives PyTorch's boxes."""

    from crosstune.inference.onnx_export import write_onnx
    from crosstune.inference.predictor import Predictor

    _saved_detector(tmp_path)
    write_onnx(tmp_path / "model", tmp_path / "model" / "model.onnx")
    paths = sorted(str(path) for path in (tmp_path / "data" / "JPEGImages").iterdir())[:3]
    torch_boxes = Predictor.from_directory(tmp_path / "model").predict(paths)
    onnx_boxes = Predictor.from_directory(tmp_path / "model", runtime="onnx").predict(paths)
    assert len(torch_boxes) == 3 and any(record["boxes"] for record in torch_boxes)
    for ours, theirs in zip(torch_boxes, onnx_boxes):
        assert [box["label"] for box in ours["boxes"]] == [box["label"] for box in theirs["boxes"]]
        for mine, other in zip(ours["boxes"], theirs["boxes"]):
            assert mine["box"] == pytest.approx(other["box"], abs=0.05)
            assert mine["score"] == pytest.approx(other["score"], abs=1e-3)


def test_training_on_the_cached_prefix_equals_training_on_images(tmp_path: Path) -> None:
    """The finetune loop from the frozen-prefix cache (the blocks below freeze.depth run once) gives the weights
    and validation scores of the same loop on the letterboxed images, batch for batch."""
    import dataclasses

    import torch

    from crosstune.config import FinetuneParams
    from crosstune.detection.batching import DetectionBatching
    from crosstune.freezing.policy import apply_freeze
    from crosstune.prefix_cache.store import CachedBatching, build_cached_split
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import RunContext
    from crosstune.transfer_model.storage import load_transfer_model

    _, split = _saved_detector(tmp_path)
    params = dataclasses.replace(FinetuneParams(), epochs=2, batch_size=2, lr=3e-3, loss="detection",
                                 select_metric="map", class_weights="none", select_window=1)
    runs = []
    for cached in (False, True):
        model, _ = load_transfer_model(tmp_path / "model")
        apply_freeze(model, 2)
        if cached:
            prefix = build_cached_split(model, 2, split, DetectionBatching(4), 4, "float32", "cpu")
            data = TrainingData(prefix, prefix, CachedBatching(2, "image"), 2)
        else:
            data = TrainingData(split, split, DetectionBatching(2), None)
        result = train(model, data, params, 0, RunContext.single_process("cpu", "off"))
        runs.append((result.history, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (plain_history, plain_weights), (cached_history, cached_weights) = runs
    assert [row["loss"] for row in cached_history] == pytest.approx([row["loss"] for row in plain_history], rel=1e-4)
    assert torch.allclose(cached_weights, plain_weights, atol=1e-5)
