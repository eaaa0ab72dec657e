"""A detector run over a split: its detections (and, against the split's boxes, its loss), batch by batch."""

from __future__ import annotations

from typing import Any

import torch


def detect_split(model: Any, split: Any, batching: Any, device: str, level: Any = None, loss_fn: Any = None,
                 batch_size: int | None = None) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]],
                                                         float | None]:
    """(detections on the canvas per image, the split's true boxes as torchvision targets, the mean loss per
    image or None without ``loss_fn``) for a :class:`~crosstune.transfer_model.detection.DetectionModel` run in
    eval mode over ``split`` (raw letterboxed images, or a cached prefix at ``level``), in the split's order."""
    from crosstune.detection.encoding import targets
    from crosstune.freezing.policy import set_train_mode

    was_training = bool(model.training)
    model.eval()
    found: dict[int, dict[str, torch.Tensor]] = {}
    truth: dict[int, dict[str, torch.Tensor]] = {}
    total = 0.0
    with torch.inference_mode():
        for batch in batching.evaluate(split, batch_size):
            batch = batch.to(device)
            inputs = dict(batch.inputs)
            boxes, box_labels = inputs["boxes"], inputs["box_labels"]
            if loss_fn is not None:
                terms, detections = model.losses_and_detections(level, **inputs)
                total += float(loss_fn(terms.float())) * len(batch.indices)
            else:
                detections = model.forward_parts(level, **inputs)[1]
            for index, found_here, true_here in zip(batch.indices.tolist(), detections,
                                                    targets(boxes.cpu(), box_labels.cpu())):
                found[index] = {key: value.detach().cpu() for key, value in found_here.items()}
                truth[index] = true_here
    if was_training:
        set_train_mode(model)
    order = sorted(found)
    mean_loss = total / max(len(order), 1) if loss_fn is not None else None
    return [found[index] for index in order], [truth[index] for index in order], mean_loss


class OnnxDetector:
    """An exported detector's ``model.onnx`` (:meth:`~crosstune.transfer_model.detection.DetectionModel.
    dense_outputs`) with torchvision's post-processing after it, called as :func:`detect_split` calls the PyTorch
    detector; ``skeleton`` is the detector loaded from the same directory (its anchors and thresholds)."""

    training = False

    def __init__(self, graph: Any, skeleton: Any) -> None:
        self.graph = graph
        self.skeleton = skeleton

    def eval(self) -> "OnnxDetector":
        return self

    def forward_parts(self, level: Any, **inputs: torch.Tensor) -> tuple[None, list[dict[str, torch.Tensor]]]:
        images = inputs["images"]
        dense = self.graph(images=images.float())
        return None, self.skeleton.detections_from_dense(dense, tuple(images.shape[-2:]))
