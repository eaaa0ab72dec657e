"""The registry of domain-adaptation losses (``finetune.adaptation``), importing no torch until one is built,
so validating ``params.yaml`` stays cheap. The loss modules live in :mod:`crosstune.methods.adaptation`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from crosstune.registry import Registry

if TYPE_CHECKING:
    from torch import nn

AdaptationFactory = Callable[[int, int], "nn.Module"]  # (feature_dim, num_classes) -> loss module
ADAPTATIONS: Registry[AdaptationFactory] = Registry("adaptation")
NO_ADAPTATION = "none"


@ADAPTATIONS.register("dann")
def dann(feature_dim: int, num_classes: int) -> "nn.Module":
    from crosstune.methods.adaptation import DANNLoss

    return DANNLoss(feature_dim, num_classes)


@ADAPTATIONS.register("cdan")
def cdan(feature_dim: int, num_classes: int) -> "nn.Module":
    from crosstune.methods.adaptation import CDANLoss

    return CDANLoss(feature_dim, num_classes)


@ADAPTATIONS.register("coral")
def coral(feature_dim: int, num_classes: int) -> "nn.Module":
    from crosstune.methods.adaptation import CORALLoss

    return CORALLoss()


@ADAPTATIONS.register("mmd")
def mmd(feature_dim: int, num_classes: int) -> "nn.Module":
    from crosstune.methods.adaptation import MMDLoss

    return MMDLoss()
