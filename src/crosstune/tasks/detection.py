"""``prepare.task: detection``: boxes around the objects of each image, each with a class and a score.

Inputs are images with box annotations in one of the three formats annotation tools export (Pascal VOC, COCO
JSON, YOLO; :mod:`crosstune.detection.formats`), every box checked against its image. The prepared tables hold
one row per image: ``image`` (its path), ``label`` (its boxes as JSON, :meth:`AnnotatedImage.boxes_json`),
``width`` and ``height``. The model is torchvision's FCOS on one of the project's image backbones
(:mod:`crosstune.transfer_model.detection`), trained with FCOS's own losses; the metrics are COCO's mean average
precision, the headline over IoU 0.50:0.95 (``map``), with the error in counting objects per image
(:mod:`crosstune.detection.scoring`).

The stages build the detector on the backbone (:mod:`crosstune.detection.stages`), train it with FCOS's own
losses (the ``detection`` loss sums them), validate by mAP, and score the test split
(:mod:`crosstune.detection.evaluation`); the guard's probe is the same detector on the frozen backbone and its
scratch model the same detector from random weights.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from crosstune.errors import ConfigError, DataError
from crosstune.tasks.base import Task

if TYPE_CHECKING:
    import pandas as pd


class Detection(Task):
    """Boxes with a class and a score per object (object detection)."""

    name = "detection"
    output = "boxes around the objects of each image, each with a class and a score"
    modalities = ("image",)
    losses = ("detection",)
    metrics = {"map": True, "map_50": True, "map_75": True, "count_mae": False, "loss": False}
    headline = "map"
    summary_metrics = ("map", "map_50")
    baseline_metrics = ()
    card_metrics = ("map", "map_50", "map_75", "count_mae")
    label_dtype = str
    reads_files = True
    cleans_texts = False
    prediction_shape = '[{"boxes": [{"box": [x_min, y_min, x_max, y_max], "label": ..., "score": ...}]}]'
    prepared_columns = ("width", "height")
    model_form = "detector"
    own_params = ("prepare.drop_bad_boxes", "head.fpn_channels", "augment.vertical_flip", "augment.scale_jitter",
                  "probe.epochs", "probe.lr", "probe.batch_size")

    # --- reading -------------------------------------------------------------------------------------------

    def read_examples(self, path: Path, params: Any) -> "pd.DataFrame":
        """A VOC folder (or image-set file), COCO JSON or YOLO folder as a prepared frame: ``image``, ``width``,
        ``height`` and ``label`` (the boxes, JSON), one row per image."""
        from crosstune.detection.annotations import annotations_frame
        from crosstune.detection.formats import read_annotations

        images, _ = read_annotations(path, drop_bad_boxes=bool(getattr(params, "drop_bad_boxes", False)))
        return annotations_frame(images)

    def read_labels(self, values: "pd.Series", path: Path) -> "pd.Series":
        return values.astype(str)

    def _boxes(self, frame: "pd.DataFrame") -> list[list[Any]]:
        from crosstune.detection.annotations import parse_boxes_json

        return [parse_boxes_json(cell) for cell in frame["label"]]

    def label_names(self, train: "pd.DataFrame") -> list[str]:
        """The classes the training boxes use, sorted (class i is the detector's label i + 1)."""
        return sorted({box.label for boxes in self._boxes(train) for box in boxes})

    def label_counts(self, frame: "pd.DataFrame") -> dict[str, int]:
        """Boxes per class."""
        return dict(sorted(Counter(box.label for boxes in self._boxes(frame) for box in boxes).items()))

    def check_training_labels(self, train: "pd.DataFrame", path: Path, minimum: int) -> None:
        """The training images must hold boxes, ``minimum`` of each class at least."""
        self.check_counts(self.label_counts(train), path, minimum, "boxes", "class(es)",
                          "annotate some objects in the training images")

    def check_test_labels(self, test: "pd.DataFrame", labels: list[str], path: Path) -> None:
        """A test box of a class no training box has: the detector cannot find it."""
        for image, boxes in zip(test["image"], self._boxes(test)):
            unknown = sorted({box.label for box in boxes} - set(labels))
            if unknown:
                raise DataError(f"{path}: {image} has boxes of class(es) {unknown} that no training image has "
                                f"(the classes: {labels}); annotate some in training, or remove those boxes.")

    # --- scores ---------------------------------------------------------------------------------------------

    def score_detections(self, detections: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]],
                         labels: Sequence[str], per_class: bool = False) -> dict[str, float]:
        """mAP over IoU 0.50:0.95 (the headline), at 0.50 and 0.75, and the counting error; with ``per_class``
        each class's AP, AP at 0.50, count error and bias and box count (``<class>_ap`` ...)."""
        from crosstune.detection.scoring import detection_scores

        scores = detection_scores(detections, targets, labels)
        result = {key: scores[key] for key in ("map", "map_50", "map_75", "count_mae", "count_bias")}
        if per_class:
            for name, values in scores["per_class"].items():
                result.update({f"{name}_{key}": value for key, value in values.items()})
        return result

    def score(self, targets: Sequence[Any], outputs: Any, labels: Sequence[str],
              per_class: bool = False) -> dict[str, float]:
        """``outputs``: (detections, true boxes) per image, both as torchvision's dicts."""
        detections, truth = outputs
        return self.score_detections(detections, truth, labels, per_class)

    # --- encoding, batching and training -------------------------------------------------------------------

    def check_source_domain(self, path: Path) -> None:
        raise DataError(f"{path}: a labelled source domain is not used for detection; set data.source to "
                        f"data/source (no source domain).")

    def encode_labels(self, labels: "pd.Series", names: Sequence[str]) -> Any:
        raise NotImplementedError("boxes are encoded with their images (crosstune.detection.encoding.encode_split)")

    def labelled(self, targets: Any) -> Any:
        import numpy as np

        return np.ones(len(targets), dtype=bool)

    def num_outputs(self, labels: Sequence[str]) -> int:
        return len(labels) + 1  # FCOS's classes: the labels and background (0, never predicted)

    def batching(self, config: dict[str, Any], batch_size: int, augment: Any = None) -> Any:
        """Letterboxed images with their padded boxes; ``augment``'s flips, scale jitter and colour move the boxes
        with the pixels (:mod:`crosstune.detection.augment`)."""
        from crosstune.detection.augment import BoxAugmentation
        from crosstune.detection.batching import DetectionBatching

        if augment is None:
            return DetectionBatching(batch_size)
        if augment.crop_scale_min < 1.0 or augment.randaugment_ops > 0:
            raise ConfigError("params.yaml: augment.crop_scale_min and augment.randaugment_ops move pixels without "
                              "their boxes; for detection use augment.scale_jitter, the flips and color_jitter, and "
                              "set those to 1.0 and 0.")
        return DetectionBatching(batch_size, BoxAugmentation(
            horizontal_flip=augment.horizontal_flip, vertical_flip=augment.vertical_flip,
            scale_min=1.0 - augment.scale_jitter, scale_max=1.0 + augment.scale_jitter, colour=augment.color_jitter))

    def validation_metrics(self, model: Any, split: Any, loss_fn: Any, labels: Sequence[str], batching: Any,
                           device: str) -> dict[str, float]:
        """FCOS's loss against the validation boxes and the mAP of what the detector finds, from one pass."""
        from crosstune.detection.inference import detect_split

        detections, truth, loss = detect_split(model.model, split, batching, device, model.level, loss_fn,
                                               batching.batch_size * 2)
        return {"loss": float(loss if loss is not None else float("nan")),
                **self.score_detections(detections, truth, labels)}

    # --- prediction ----------------------------------------------------------------------------------------

    def decode_inputs(self, values: Sequence[Any], config: dict[str, Any]) -> Any:
        """New images letterboxed onto the model's canvas (with no boxes); an unreadable one is named."""
        from crosstune.data.images import check_image
        from crosstune.detection.encoding import encode_split

        for path in values:
            check_image(Path(str(path)), 1)
        return encode_split([str(path) for path in values], [[] for _ in values], config["labels"],
                            tuple(config["detector"]["canvas"]))

    def predict_split(self, model: Any, split: Any, batching: Any, device: str) -> Any:
        """Detections in each image's own pixels (``model``: a detector, or an exported ``model.onnx`` run with
        the post-processing of the detector saved beside it)."""
        import torch

        from crosstune.detection.encoding import to_image_pixels
        from crosstune.detection.inference import OnnxDetector, detect_split

        if not isinstance(model, torch.nn.Module):
            from crosstune.detection.storage import load_detector

            model = OnnxDetector(model, load_detector(Path(model.path).parent)[0])

        return to_image_pixels(detect_split(model, split, batching, device)[0], split.scales)

    def prediction_records(self, outputs: Any, split: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
        """Per image, its boxes (x_min, y_min, x_max, y_max in the image's pixels), class and score, best first."""
        return [{"boxes": boxes_records(found, labels)} for found in outputs]

    def check_drawing(self, directory: str) -> None:
        """A detector draws its boxes."""

    def draw_predictions(self, inputs: Sequence[Any], records: Sequence[dict[str, Any]], directory: Path,
                         labels: Sequence[str]) -> None:
        """Each image as ``<directory>/<name>.png`` with the boxes scoring at least 0.5 drawn, class and score
        beside them (several images of one name: the later ones numbered)."""
        import torch

        from crosstune.detection.drawing import draw_boxes
        from crosstune.detection.evaluation import DRAW_THRESHOLD
        from crosstune.io import atomic_path

        directory.mkdir(parents=True, exist_ok=True)
        index = {name: position + 1 for position, name in enumerate(labels)}
        taken: set[str] = set()
        for path, record in zip(inputs, records):
            boxes = record["boxes"]
            found = {"boxes": torch.tensor([box["box"] for box in boxes], dtype=torch.float32).reshape(-1, 4),
                     "labels": torch.tensor([index[box["label"]] for box in boxes], dtype=torch.int64),
                     "scores": torch.tensor([box["score"] for box in boxes], dtype=torch.float32)}
            name, number = Path(str(path)).stem, 1
            while f"{name}.png" in taken:
                number += 1
                name = f"{Path(str(path)).stem}-{number}"
            taken.add(f"{name}.png")
            with atomic_path(directory / f"{name}.png") as staging:
                draw_boxes(str(path), None, found, labels, DRAW_THRESHOLD).save(staging, format="PNG")

    # --- what does not apply -------------------------------------------------------------------------------

    def transferability(self, score: str) -> Any:
        raise ConfigError("params.yaml: backbone.select: score ranks backbones for one label per image; for "
                          "detection set backbone.select: name and backbone.name.")

    def block_transferability(self) -> Any:
        raise ConfigError("params.yaml: freeze.depth: auto scores blocks for one label per image; for detection give "
                          "a number of backbone blocks or all.")

    def hf_config(self, config: Any, labels: Sequence[str]) -> None:
        """Nothing to set: a detector is exported in its own form or as ONNX, not as a Hugging Face model."""

    def report_sections(self, test: dict[str, Any], predictions: Path) -> list[str] | None:
        """The per-class table (AP, AP at IoU 0.5, counting error) and the worst test images, drawn."""
        from crosstune.reporting.detections import per_class_html, worst_images_html

        return [per_class_html(test), worst_images_html(predictions)]


def boxes_records(found: dict[str, Any], labels: Sequence[str]) -> list[dict[str, Any]]:
    """One image's detections as JSON-ready records, best score first (boxes rounded to 0.01 pixel)."""
    order = sorted(range(len(found["scores"])), key=lambda index: -float(found["scores"][index]))
    return [{"box": [round(float(value), 2) for value in found["boxes"][index]],
             "label": labels[int(found["labels"][index]) - 1], "score": round(float(found["scores"][index]), 4)}
            for index in order]
