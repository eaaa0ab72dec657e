"""The detection task's model: a torchvision FCOS on an image backbone behind the :class:`TransferModel` interface.

The backbone is the project's staged image backbone, so ``freeze.depth`` counts its blocks as for
classification, layer-wise rates and gradual unfreezing see its layers, and the frozen-prefix cache stores the
outputs of the frozen stages: the feature map after stage ``depth`` plus the earlier stages the pyramid reads
(with ``depth: all``, just the pyramid's inputs, so only the pyramid and head run per epoch). The head is new:
the feature pyramid and FCOS's classification, box and centre-ness towers.

The forward pass is FCOS's own, taken apart at the backbone so that a cached prefix can stand in for it:
normalise, backbone (or the rest of it after the prefix), pyramid, ``head``, ``anchor_generator``, then
``compute_loss`` in training or ``postprocess_detections`` (score threshold, per-class NMS, top detections)
in evaluation. Images arrive letterboxed onto one canvas (:mod:`crosstune.detection.encoding`), so the
detector's own resize is never needed. In training the outputs are FCOS's three loss terms, stacked, and the
``detection`` loss sums them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from crosstune.transfer_model.modules import PrefixLevel, TransferModel


class DetectionModel(TransferModel):
    """A detector (``torchvision.models.detection.FCOS`` built by :func:`crosstune.detection.model.build_detector`).

    Shape:
        images (B, 3, H, W) in [0, 1], boxes (B, M, 4) canvas pixels, box_labels (B, M) (0: padding)
        -> training: the loss terms (3,); evaluation: per image a dict of boxes (n, 4), scores (n,), labels (n,)
    """

    modality = "image"
    chosen_by_task = True  # built for prepare.task: detection, never as the image modality's model
    prefix_passthrough = ("boxes", "box_labels")
    loss_terms = ("classification", "bbox_regression", "bbox_ctrness")

    def __init__(self, detector: nn.Module, spec: dict[str, Any], settings: Any = None) -> None:
        nn.Module.__init__(self)
        self.detector = detector
        self.spec = dict(spec)
        self.settings = settings  # crosstune.detection.storage.DetectorSettings: what rebuilds the detector

    @property
    def backbone(self) -> nn.Module:  # type: ignore[override]
        return self.detector.backbone.backbone

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        return nn.ModuleList([self.detector.backbone.fpn, self.detector.head])

    @property
    def preprocessing(self) -> Any:
        return self.backbone.preprocessing

    @property
    def feature_dim(self) -> int:
        return int(self.detector.backbone.out_channels)

    # --- the backbone, whole or after a cached prefix ------------------------------------------------------

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.preprocessing.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def _stages_from(self, start: int, x: torch.Tensor, found: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run the backbone's stages from ``start`` on ``x``, collecting the pyramid's inputs (``found``: those
        already computed), then the pyramid. Returns the pyramid's levels, finest first."""
        pyramid = self.detector.backbone
        inputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        last = pyramid.stage_indices[-1]
        for index in range(start, last + 1):
            x = self.backbone._stages[index](self.backbone.body, x)
            found[str(index)] = x
        for index in pyramid.stage_indices:
            inputs[str(index)] = found[str(index)]
        return list(pyramid.fpn(inputs).values())

    def pyramid_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid's levels for raw images (B, 3, H, W) in [0, 1]."""
        return self._stages_from(0, self._normalise(images), {})

    def _prefix_stop(self, level: PrefixLevel) -> int:
        """The last backbone stage inside the frozen prefix (stage 0 is the stem, stage i block i)."""
        last = self.detector.backbone.stage_indices[-1]
        return last if level == "all" else min(int(level), last)

    def prefix_outputs(self, level: PrefixLevel, images: torch.Tensor,  # type: ignore[override]
                       boxes: torch.Tensor | None = None, box_labels: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
        """The frozen stages' outputs: ``prefix`` (after the last frozen stage) and ``pyramid_<i>`` for each
        stage i the pyramid reads below it."""
        stop = self._prefix_stop(level)
        x = self._normalise(images)
        outputs: dict[str, torch.Tensor] = {}
        for index in range(stop + 1):
            x = self.backbone._stages[index](self.backbone.body, x)
            if index in self.detector.backbone.stage_indices and index < stop:
                outputs[f"pyramid_{index}"] = x
        outputs["prefix"] = x
        return outputs

    def advance_prefix(self, level: PrefixLevel, cached: dict[str, torch.Tensor],
                       to: PrefixLevel = "all") -> dict[str, torch.Tensor]:
        """The prefix outputs at a deeper level ``to`` from those at ``level`` (running only the stages between):
        what :meth:`prefix_outputs` at ``to`` would give, without the early, costly stages again."""
        start, stop = self._prefix_stop(level), self._prefix_stop(to)
        outputs = {key: value for key, value in cached.items() if key.startswith("pyramid_")}
        x = cached["prefix"]
        if start in self.detector.backbone.stage_indices and start < stop:
            outputs[f"pyramid_{start}"] = x
        for index in range(start + 1, stop + 1):
            x = self.backbone._stages[index](self.backbone.body, x)
            if index in self.detector.backbone.stage_indices and index < stop:
                outputs[f"pyramid_{index}"] = x
        outputs["prefix"] = x
        return outputs

    def _features_from_prefix(self, level: PrefixLevel, cached: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        stop = self._prefix_stop(level)
        found = {key.removeprefix("pyramid_"): value for key, value in cached.items() if key.startswith("pyramid_")}
        found[str(stop)] = cached["prefix"]
        return self._stages_from(stop + 1, cached["prefix"], found)

    # --- FCOS's head, losses and post-processing -------------------------------------------------------------

    def _heads(self, features: list[torch.Tensor], canvas: tuple[int, int], count: int) -> tuple[Any, ...]:
        """FCOS's head outputs and anchors (one point per location) over the pyramid's levels."""
        from torchvision.models.detection.image_list import ImageList

        image_list = ImageList(torch.empty(count, 3, *canvas, device=features[0].device), [canvas] * count)
        head_outputs = self.detector.head(features)
        anchors = self.detector.anchor_generator(image_list, features)
        return head_outputs, anchors, [feature.size(2) * feature.size(3) for feature in features], image_list

    def _loss_terms(self, heads: tuple[Any, ...], boxes: torch.Tensor, box_labels: torch.Tensor) -> torch.Tensor:
        from crosstune.detection.encoding import targets

        head_outputs, anchors, per_level, _ = heads
        losses = self.detector.compute_loss(targets(boxes, box_labels), head_outputs, anchors, per_level)
        return torch.stack([losses[name] for name in self.loss_terms])

    def _detections(self, heads: tuple[Any, ...]) -> list[dict[str, torch.Tensor]]:
        head_outputs, anchors, per_level, image_list = heads
        split_outputs = {key: list(value.split(per_level, dim=1)) for key, value in head_outputs.items()}
        split_anchors = [list(image_anchors.split(per_level)) for image_anchors in anchors]
        return self.detector.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)

    def _pyramid(self, level: PrefixLevel | None, inputs: dict[str, torch.Tensor]
                 ) -> tuple[list[torch.Tensor], tuple[int, int], int]:
        """The pyramid's levels, the canvas and the batch size, from raw images or a cached prefix."""
        if level is None:
            images = inputs["images"]
            return self.pyramid_features(images), tuple(images.shape[-2:]), images.shape[0]
        features = self._features_from_prefix(level, inputs)
        stride = self.detector.backbone.strides[0]
        return features, (features[0].shape[-2] * stride, features[0].shape[-1] * stride), features[0].shape[0]

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None,  # type: ignore[override]
                box_labels: torch.Tensor | None = None) -> Any:
        return self.forward_parts(None, images=images, boxes=boxes, box_labels=box_labels)[1]

    def forward_parts(self, level: PrefixLevel | None, **inputs: torch.Tensor) -> tuple[Any, Any]:
        """(the coarsest pyramid level, pooled: what regularisers read; in training the loss terms (3,), in
        evaluation the detections)."""
        boxes, box_labels = inputs.pop("boxes", None), inputs.pop("box_labels", None)
        features, canvas, count = self._pyramid(level, inputs)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(features[-1], 1), 1)
        heads = self._heads(features, canvas, count)
        return pooled, self._loss_terms(heads, boxes, box_labels) if self.training else self._detections(heads)

    def losses_and_detections(self, level: PrefixLevel | None, **inputs: torch.Tensor
                              ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Both from one pass, whatever the mode (validation: the loss against the boxes, and what is found)."""
        boxes, box_labels = inputs.pop("boxes"), inputs.pop("box_labels")
        features, canvas, count = self._pyramid(level, inputs)
        heads = self._heads(features, canvas, count)
        return self._loss_terms(heads, boxes, box_labels), self._detections(heads)

    def features(self, images: torch.Tensor, boxes: torch.Tensor | None = None,  # type: ignore[override]
                 box_labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.pyramid_features(images)[-1], 1), 1)

    def features_from_prefix(self, level: PrefixLevel, **cached: torch.Tensor) -> torch.Tensor:
        cached.pop("boxes", None)
        cached.pop("box_labels", None)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self._features_from_prefix(level, cached)[-1], 1), 1)

    def forward_from_prefix(self, level: PrefixLevel, **cached: torch.Tensor) -> Any:
        return self.forward_parts(level, **cached)[1]

    # --- what freezing, rates and storage ask -----------------------------------------------------------------

    def stem_modules(self) -> list[nn.Module]:
        return self.backbone.stem

    def block_modules(self) -> list[list[nn.Module]]:
        return self.backbone.blocks

    def backbone_entry(self) -> dict[str, Any]:
        return self.backbone.saved_config(self.spec.get("backbone_weights", "none"))

    def onnx_input_names(self) -> tuple[str, ...]:
        return ("images",)

    def onnx_example_inputs(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.rand(2, 3, *self.settings.canvas, generator=generator),)

    def onnx_outputs(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The dense part only (what traces): :meth:`dense_outputs`."""
        return self.dense_outputs(inputs["images"])

    # --- the dense outputs and their post-processing apart (ONNX runs the first) -------------------------------

    def dense_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """Per location of every pyramid level (finest first), FCOS's class logits (K), box regression (4) and
        centre-ness (1) side by side. Shape: images (B, 3, H, W) in [0, 1] -> (B, L, K + 5)."""
        head = self.detector.head(self.pyramid_features(images))
        return torch.cat([head["cls_logits"], head["bbox_regression"], head["bbox_ctrness"]], dim=2)

    def level_sizes(self, canvas: tuple[int, int]) -> list[tuple[int, int]]:
        """(height, width) of each pyramid level for images on ``canvas``: the backbone's strides halve with
        rounding up (3x3 convolutions of stride 2, padding 1), as do P6 and P7 after the last stage."""
        sizes = []
        height, width = canvas
        for stride in self.detector.backbone.strides:
            sizes.append((-(-height // stride), -(-width // stride)))
        return sizes

    def detections_from_dense(self, dense: torch.Tensor, canvas: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """FCOS's post-processing (anchors, score threshold, per-class NMS, top detections) of
        :meth:`dense_outputs`, computed elsewhere (ONNX Runtime)."""
        classes = int(self.detector.head.classification_head.num_classes)
        head_outputs = {"cls_logits": dense[..., :classes], "bbox_regression": dense[..., classes:classes + 4],
                        "bbox_ctrness": dense[..., classes + 4:]}
        features = [torch.empty((dense.shape[0], 1, height, width), dtype=dense.dtype)
                    for height, width in self.level_sizes(canvas)]
        from torchvision.models.detection.image_list import ImageList

        image_list = ImageList(torch.empty(dense.shape[0], 3, *canvas, dtype=dense.dtype), [canvas] * dense.shape[0])
        anchors = self.detector.anchor_generator(image_list, features)
        per_level = [feature.size(2) * feature.size(3) for feature in features]
        return self._detections((head_outputs, anchors, per_level, image_list))


class SummedLossTerms(nn.Module):
    """A detector's own loss: the sum of the terms it computed against the batch's boxes (FCOS: sigmoid focal loss
    on classes, GIoU on boxes, BCE on centre-ness; Tian et al. 2019, https://arxiv.org/abs/1904.01355), so the
    matching of locations to boxes stays torchvision's. Shape: (T,) terms, any targets -> ()."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return outputs.sum()
