"""A torchvision detector on one of the project's image backbones: the backbone's blocks feed a feature pyramid.

The backbone is any :class:`~crosstune.backbones.vision.VisionBackbone` (EfficientNet-Lite, torchvision's
CNNs, the tiny test CNN): its stage outputs at strides 8, 16 and 32 (:func:`pyramid_levels`) go through
torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` with two extra levels (P6, P7) into
torchvision's FCOS (Tian et al. 2019, https://arxiv.org/abs/1904.01355): per location of every level, class
scores (sigmoid focal loss, Lin et al. 2017, https://arxiv.org/abs/1708.02002), the distances to the box's four
sides (GIoU loss) and a centre-ness score. Anchors, matching, box coding, losses, resizing and NMS are
torchvision's own; nothing of the detection maths is written here.

A pretrained backbone's BatchNorm layers become :class:`~torchvision.ops.misc.FrozenBatchNorm2d` (as
torchvision's own detection backbones do): detection batches are a few images, too few for batch statistics.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

PYRAMID_STRIDES = (8, 16, 32)  # the backbone outputs the pyramid reads (C3, C4, C5 in FPN's terms)
PROBE_SIDE = 256  # the square input that finds each stage's stride


def pyramid_levels(backbone: Any, strides: Sequence[int] = PYRAMID_STRIDES) -> list[tuple[int, int, int]]:
    """``(stage index, stride, channels)`` of the stages that feed the pyramid: the last stage at each of
    ``strides`` the backbone reaches. A last stage that keeps the stride of the one before is the backbone's
    pointwise classifier projection (EfficientNet's ``conv_head``, MobileNet's last 1x1) and is left out."""
    was_training = backbone.training
    backbone.eval()
    shapes = []
    with torch.no_grad():
        x = torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE)
        for stage in backbone._stages:
            x = stage(backbone.body, x)
            shapes.append((PROBE_SIDE // x.shape[-1], x.shape[1]) if x.dim() == 4 else (0, 0))
    backbone.train(was_training)
    if len(shapes) > 1 and shapes[-1][0] == shapes[-2][0]:
        shapes = shapes[:-1]
    levels = [(max(index for index, (stride, _) in enumerate(shapes) if stride == wanted), wanted,
               next(channels for stride, channels in reversed(shapes) if stride == wanted))
              for wanted in strides if any(stride == wanted for stride, _ in shapes)]
    if not levels:
        raise ValueError(f"backbone {getattr(backbone, 'name', '')!r} reaches none of the strides {list(strides)} "
                         f"a feature pyramid reads (its stages' strides: {[stride for stride, _ in shapes]})")
    return levels


class PyramidBackbone(nn.Module):
    """The backbone's stage outputs at :func:`pyramid_levels`, through a feature pyramid with P6 and P7.

    Shape: images (B, 3, H, W) -> OrderedDict of (B, out_channels, H / s, W / s), s = 8, 16, ... 128.
    ``out_channels`` is what torchvision's detectors read to size their heads.
    """

    def __init__(self, backbone: nn.Module, out_channels: int,
                 levels: Sequence[tuple[int, int, int]] | None = None) -> None:
        """``levels``: :func:`pyramid_levels` as recorded with a saved detector; None finds them (a forward pass)."""
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        super().__init__()
        self.backbone = backbone
        levels = [tuple(level) for level in levels] if levels is not None else pyramid_levels(backbone)
        self.levels = levels
        self.stage_indices = [index for index, _, _ in levels]
        self.strides = [stride for _, stride, _ in levels] + [levels[-1][1] * 2, levels[-1][1] * 4]
        self.fpn = FeaturePyramidNetwork([channels for _, _, channels in levels], out_channels,
                                         extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = images
        for index, stage in enumerate(self.backbone._stages[:self.stage_indices[-1] + 1]):
            x = stage(self.backbone.body, x)
            if index in self.stage_indices:
                features[str(index)] = x
        return self.fpn(features)


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every ``BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` holding its statistics and affine
    weights (eps kept); returns how many were replaced."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach() if child.affine else torch.ones(child.num_features))
            frozen.bias.copy_(child.bias.detach() if child.affine else torch.zeros(child.num_features))
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
            replaced += 1
        else:
            replaced += freeze_batchnorm(child)
    return replaced


def build_detector(backbone: nn.Module, num_classes: int, *, min_size: int, max_size: int, fpn_channels: int = 128,
                   pretrained: bool = True, score_threshold: float = 0.05, nms_threshold: float = 0.6,
                   detections_per_image: int = 100, seed: int = 0,
                   levels: Sequence[tuple[int, int, int]] | None = None) -> nn.Module:
    """torchvision's FCOS on ``backbone`` for ``num_classes`` object classes (labels 1..num_classes; 0 is never
    predicted), resizing images so the short side is ``min_size`` (the long side at most ``max_size``) and
    normalising with the backbone's own statistics. The new layers (pyramid, head) are seeded by ``seed``;
    ``levels``: the pyramid's inputs when known (:class:`PyramidBackbone`)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if fpn_channels % 32:
        raise ValueError(f"fpn_channels: {fpn_channels} is not a multiple of 32 (FCOS's head normalises in 32 "
                         f"groups); use 64, 128 or 256.")
    if pretrained:
        freeze_batchnorm(backbone)
    torch.manual_seed(seed)
    features = PyramidBackbone(backbone, fpn_channels, levels)
    # FCOS's "anchors" are one point per location, sized by the level's stride: they set each level's size range
    anchors = AnchorGenerator(tuple((stride,) for stride in features.strides), ((1.0,),) * len(features.strides))
    preprocessing = backbone.preprocessing
    return FCOS(features, num_classes=num_classes + 1, min_size=min_size, max_size=max_size,
                image_mean=list(preprocessing.mean), image_std=list(preprocessing.std), anchor_generator=anchors,
                score_thresh=score_threshold, nms_thresh=nms_threshold, detections_per_img=detections_per_image)
