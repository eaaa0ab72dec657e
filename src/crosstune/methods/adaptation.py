"""Domain adaptation as loss modules over features: each takes a batch of source features (and logits)
and a batch of target features (and logits) and returns a scalar added to the task loss.

None of them is a training loop: the loop feeds them pooled features of a labelled source batch and an
unlabelled target batch and adds ``finetune.adaptation_weight`` times their value to the loss.
Registered by name in :mod:`crosstune.methods.registry` (``finetune.adaptation``): ``dann``, ``cdan``, ``coral``,
``mmd``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx: object, gradient: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * gradient, None


class GradientReversal(nn.Module):
    """Identity forward; backward multiplies the gradient by -lambda (Ganin and Lempitsky, ICML 2015)."""

    def __init__(self, coefficient: float = 1.0) -> None:
        super().__init__()
        self.coefficient = coefficient

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _ReverseGradient.apply(inputs, self.coefficient)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """The usual schedule of the reversal coefficient: 2 / (1 + exp(-gamma p)) - 1 for training progress
    p in [0, 1], so the discriminator's noisy early signal barely reaches the features."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def _discriminator(in_features: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 1))


class DANNLoss(nn.Module):
    """DANN (Ganin et al., JMLR 2016, https://arxiv.org/abs/1505.07818).

    L_d = BCE(D(R_lambda(f_s)), 1) + BCE(D(R_lambda(f_t)), 0): the discriminator D learns to tell the
    domains apart while the gradient reversal R_lambda makes the feature extractor confuse it, pushing
    source and target features to one distribution. lambda follows :func:`dann_lambda` via ``progress``.
    """

    def __init__(self, feature_dim: int, num_classes: int = 0, hidden: int = 256) -> None:
        super().__init__()
        self.reversal = GradientReversal()
        self.discriminator = _discriminator(feature_dim, hidden)
        self.progress = 0.0

    def domain_inputs(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return features

    def forward(self, source_features: torch.Tensor, target_features: torch.Tensor,
                source_logits: torch.Tensor | None = None, target_logits: torch.Tensor | None = None) -> torch.Tensor:
        self.reversal.coefficient = dann_lambda(self.progress)
        inputs = torch.cat([self.domain_inputs(source_features, source_logits),
                            self.domain_inputs(target_features, target_logits)])
        domains = torch.cat([torch.ones(len(source_features)), torch.zeros(len(target_features))]).to(inputs.device)
        scores = self.discriminator(self.reversal(inputs)).squeeze(-1)
        return nn.functional.binary_cross_entropy_with_logits(scores, domains)


class CDANLoss(DANNLoss):
    """CDAN (Long et al., NeurIPS 2018, https://arxiv.org/abs/1705.10667).

    As DANN, but the discriminator sees the multilinear map f (x) g of the features f and the
    predicted class probabilities g (their outer product, flattened), so it aligns the class-conditional
    distributions rather than only the marginal one. (The randomized map for large f x g is left out:
    crosstune's heads are small.)
    """

    def __init__(self, feature_dim: int, num_classes: int = 2, hidden: int = 256) -> None:
        super().__init__(feature_dim * num_classes, num_classes, hidden)

    def domain_inputs(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probabilities = logits.softmax(dim=-1).detach()
        return torch.bmm(probabilities.unsqueeze(2), features.unsqueeze(1)).flatten(1)


class CORALLoss(nn.Module):
    """Deep CORAL (Sun and Saenko, ECCV 2016 workshops, https://arxiv.org/abs/1607.01719).

    L = ||C_s - C_t||_F^2 / (4 d^2), with C the d x d covariance of each batch's features: aligning
    second-order statistics. Zero for identical batches.
    """

    def forward(self, source_features: torch.Tensor, target_features: torch.Tensor,
                source_logits: torch.Tensor | None = None, target_logits: torch.Tensor | None = None) -> torch.Tensor:
        dim = source_features.shape[1]
        difference = _covariance(source_features.float()) - _covariance(target_features.float())
        return difference.pow(2).sum() / (4 * dim * dim)


def _covariance(features: torch.Tensor) -> torch.Tensor:
    centred = features - features.mean(dim=0, keepdim=True)
    return centred.T @ centred / max(len(features) - 1, 1)


class MMDLoss(nn.Module):
    """Multi-kernel MMD (Long et al., DAN, ICML 2015, https://arxiv.org/abs/1502.02791).

    MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t) with k a sum of Gaussian kernels whose bandwidths are
    the batch's mean squared distance times ``multipliers``. Zero for identical distributions and
    growing as they move apart (biased V-statistic: exactly 0 for identical batches).
    """

    def __init__(self, multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> None:
        super().__init__()
        self.multipliers = tuple(multipliers)

    def forward(self, source_features: torch.Tensor, target_features: torch.Tensor,
                source_logits: torch.Tensor | None = None, target_logits: torch.Tensor | None = None) -> torch.Tensor:
        source, target = source_features.float(), target_features.float()
        joint = torch.cat([source, target])
        distances = torch.cdist(joint, joint).pow(2)
        bandwidth = distances.detach().sum() / max(len(joint) ** 2 - len(joint), 1)
        kernel = sum(torch.exp(-distances / (bandwidth * multiplier).clamp(min=1e-9)) for multiplier in self.multipliers)
        count = len(source)
        return kernel[:count, :count].mean() + kernel[count:, count:].mean() - 2 * kernel[:count, count:].mean()
