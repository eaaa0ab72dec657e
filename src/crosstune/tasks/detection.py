"""``prepare.task: detection``: boxes around the objects of each image, each with a class and a score.

Inputs are images with box annotations in one of the three formats annotation tools export (Pascal VOC, COCO
JSON, YOLO; :mod:`crosstune.detection.formats`), every box checked against its image. The prepared tables hold
one row per image: ``image`` (its path), ``label`` (its boxes as JSON, :meth:`AnnotatedImage.boxes_json`),
``width`` and ``height``. The model is torchvision's FCOS on one of the project's image backbones
(:mod:`crosstune.transfer_model.detection`), trained with FCOS's own losses; the metrics are COCO's mean average
precision, the headline over IoU 0.50:0.95 (``map``), with the error in counting objects per image
(:mod:`crosstune.detection.scoring`).

Not in :data:`~crosstune.tasks.registry.TASKS` yet: the backbone stage encodes detection splits
(:func:`crosstune.detection.encoding.save_and_encode`), but attach_head, cache, probe, finetune, scratch, evaluate
and predict do not build or score detectors yet, so ``prepare.task: detection`` is still refused as unknown.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from crosstune.errors import DataError
from crosstune.tasks.base import Task

if TYPE_CHECKING:
    import pandas as pd


class Detection(Task):
    """Boxes with a class and a score per object (object detection)."""

    name = "detection"
    output = "boxes around the objects of each image, each with a class and a score"
    modalities = ("image",)
    losses = ("detection",)
    metrics = {"map": True, "map_50": True, "loss": False}
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
    own_params = ("prepare.drop_bad_boxes",)

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
        counts = self.label_counts(train)
        if not counts:
            raise DataError(f"{path}: no boxes in the training images; annotate some objects.")
        small = {name: count for name, count in counts.items() if count < minimum}
        if small:
            raise DataError(f"{path}: too few training boxes of class(es) {small} (need at least {minimum} each: "
                            f"prepare.min_examples_per_class); annotate more, or lower it.")

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
