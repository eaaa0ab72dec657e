"""Task losses by name: cross-entropy (optionally class-weighted) and mean squared error. Which suit a task,
and how it builds them, is the task's (:attr:`crosstune.tasks.base.Task.losses`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence, Union

from crosstune.registry import Registry

if TYPE_CHECKING:
    import torch

LossFactory = Callable[["torch.Tensor | None", float], "torch.nn.Module"]
LOSSES: Registry[LossFactory] = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(class_weights: "torch.Tensor | None", label_smoothing: float = 0.0) -> "torch.nn.Module":
    """Cross-entropy; ``label_smoothing`` spreads that much target mass evenly over all classes
    (Szegedy et al. 2016), which keeps a small target set from driving logits to extremes."""
    import torch

    return torch.nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)


@LOSSES.register("token_cross_entropy")
def token_cross_entropy(class_weights: "torch.Tensor | None", label_smoothing: float = 0.0) -> "torch.nn.Module":
    """Cross-entropy over tokens: (B, T, C) logits against (B, T) tags, or (W, C) against (W,); tokens tagged
    -100 (sub-tokens after a word's first, padding, words another window predicts) are skipped, as in BERT's
    NER recipe (Devlin et al. 2019, https://arxiv.org/abs/1810.04805)."""
    import torch

    from crosstune.data.text_encoding import IGNORED

    class TokenCrossEntropy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.loss = torch.nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing,
                                                  ignore_index=IGNORED)

        def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return self.loss(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    return TokenCrossEntropy()


@LOSSES.register("detection")
def detection(class_weights: "torch.Tensor | None", label_smoothing: float = 0.0) -> "torch.nn.Module":
    """A detector's own loss terms, summed (FCOS: sigmoid focal loss on classes, GIoU on boxes, BCE on
    centre-ness; :class:`crosstune.transfer_model.detection.SummedLossTerms`)."""
    from crosstune.transfer_model.detection import SummedLossTerms

    return SummedLossTerms()


@LOSSES.register("mse")
def mse(class_weights: "torch.Tensor | None", label_smoothing: float = 0.0) -> "torch.nn.Module":
    import torch

    class SquaredError(torch.nn.Module):
        """MSE between a (B, 1) regression output and (B,) targets."""

        def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.mse_loss(outputs.squeeze(-1), targets.float())

    return SquaredError()


def class_weight_tensor(
    setting: Union[str, Sequence[float]], train_labels: "torch.Tensor", num_classes: int
) -> "torch.Tensor | None":
    """``none`` -> None; ``balanced`` -> n_samples / (n_classes * count) (scikit-learn's rule);
    a list -> those weights, one per label in sorted label order."""
    import numpy as np
    import torch

    if isinstance(setting, str):
        if setting == "none":
            return None
        from sklearn.utils.class_weight import compute_class_weight

        classes = np.arange(num_classes)
        weights = compute_class_weight("balanced", classes=classes, y=train_labels.numpy())
        return torch.tensor(weights, dtype=torch.float32)
    if len(setting) != num_classes:
        raise ValueError(
            f"params.yaml: finetune.class_weights has {len(setting)} weights but there are {num_classes} "
            f"labels; give one weight per label in sorted label order (see data/prepared/labels.json)."
        )
    return torch.tensor(list(setting), dtype=torch.float32)
