"""Transferability scores: how well a frozen backbone's features suit the target labels, before any
fine-tuning. Each score is a plain function of features (N, D) and labels (N,); higher is better.

- ``logme``: LogME, You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021 (https://arxiv.org/abs/2102.11005).
- ``hscore``: H-score, Bao et al., "An Information-Theoretic Approach to Transferability in Task
  Transfer Learning", ICIP 2019, with Ledoit-Wolf shrinkage of the feature covariance (Ibrahim et al.,
  "Newer is not always better", 2022) so that it stays finite when D is close to N.
- ``linear_probe`` / ``knn``: cross-validated accuracy of a logistic regression / a 5-nearest-neighbour
  classifier on the features: the simple reference scores.

Two more read the backbone's own source classifier (an ImageNet head) instead of its features, so they
exist only for backbones that carry one (:data:`SOURCE_SCORES`, functions of the source-class
probabilities (N, Z) and the labels):

- ``leep``: LEEP, Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020 (https://arxiv.org/abs/2002.12462).
- ``nce``: negative conditional entropy, Tran et al., "Transferability and Hardness of Supervised
  Classification Tasks", ICCV 2019 (https://arxiv.org/abs/1908.08142).

The domain gap between source and target features lives in :mod:`crosstune.selection.domain_gap`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from crosstune.errors import ConfigError
from crosstune.registry import Registry

Score = Callable[[np.ndarray, np.ndarray], float]
SCORES: Registry[Score] = Registry("transferability score")
# scores of a source classifier's probabilities (N, Z) instead of features; backbones without one have none
SOURCE_SCORES: Registry[Score] = Registry("source-classifier score")
MAX_FIXED_POINT_STEPS = 100


def check_score(name: str) -> None:
    """``backbone.score`` must name a feature score or a source-classifier score; an unknown one lists both kinds."""
    if name not in SCORES and name not in SOURCE_SCORES:
        raise ConfigError(f"params.yaml: backbone.score: unknown score {name!r}; valid: transferability scores "
                          f"{SCORES.names()} or source-classifier scores {SOURCE_SCORES.names()}")


def _targets(labels: np.ndarray, regression: bool) -> np.ndarray:
    """Regression: the one target column. Classification: one-hot columns, one per class (LogME
    scores each as a regression target and averages)."""
    labels = np.asarray(labels)
    if regression:
        return labels.astype(np.float64).reshape(-1, 1)
    classes = np.unique(labels)
    return (labels.reshape(-1, 1) == classes.reshape(1, -1)).astype(np.float64)


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """Log marginal likelihood of ``target`` under Bayesian linear regression on ``features`` with
    prior precision ``alpha`` and noise precision ``beta``, computed directly (O(D^3)):

        log p(y | F, α, β) = D/2 log α + N/2 log β − N/2 log 2π − β/2 ||y − F m||² − α/2 ||m||² − 1/2 log|A|,
        A = α I + β FᵀF,  m = β A⁻¹ Fᵀ y.

    Shape:
        features (N, D), target (N,) -> scalar
    """
    features = np.asarray(features, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n, d = features.shape
    precision = alpha * np.eye(d) + beta * features.T @ features
    mean = beta * np.linalg.solve(precision, features.T @ target)
    residual = float(np.sum((target - features @ mean) ** 2))
    _, log_det = np.linalg.slogdet(precision)
    return (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * residual - alpha / 2 * float(mean @ mean) - log_det / 2)


def _evidence_from_spectrum(s: np.ndarray, z: np.ndarray, target_norm2: float, n: int, d: int,
                            alpha: float, beta: float) -> tuple[float, float, float, float]:
    """The same evidence through the SVD of F (σ² = s, z = Uᵀy): O(r) per (α, β) instead of O(D³).
    Returns (evidence, gamma, ||m||², ||y − Fm||²)."""
    shrink = alpha + beta * s
    mean_norm2 = float(np.sum((beta * np.sqrt(s) * z / shrink) ** 2))
    residual = target_norm2 - float(z @ z) + float(np.sum((alpha * z / shrink) ** 2))
    gamma = float(np.sum(beta * s / shrink))
    log_det = float(np.sum(np.log(shrink))) + (d - len(s)) * np.log(alpha)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * residual - alpha / 2 * mean_norm2 - log_det / 2)
    return evidence, gamma, mean_norm2, residual


def logme(features: np.ndarray, labels: np.ndarray, regression: bool = False) -> float:
    """LogME: the maximum log evidence per sample of a Bayesian linear model on the features, averaged
    over target columns. α and β are found by MacKay's fixed-point iteration:

        γ = Σ βσᵢ² / (α + βσᵢ²),  α ← γ / ||m||²,  β ← (N − γ) / ||y − Fm||²

    One thin SVD of F serves every target and iteration, so D > N costs no more than N > D.

    Shape:
        features (N, D), labels (N,) -> scalar (higher: features explain the labels better)
    """
    features = np.asarray(features, dtype=np.float64)
    n, d = features.shape
    left, singular, _ = np.linalg.svd(features, full_matrices=False)
    keep = singular > singular.max() * 1e-10 if singular.size else singular.astype(bool)
    left, s = left[:, keep], singular[keep] ** 2
    evidences = []
    for target in _targets(labels, regression).T:
        z = left.T @ target
        target_norm2 = float(target @ target)
        alpha, beta = 1.0, 1.0
        for _ in range(MAX_FIXED_POINT_STEPS):
            _, gamma, mean_norm2, residual = _evidence_from_spectrum(s, z, target_norm2, n, d, alpha, beta)
            new_alpha = gamma / max(mean_norm2, 1e-12)
            new_beta = (n - gamma) / max(residual, 1e-12)
            converged = abs(new_alpha / new_beta - alpha / beta) <= 1e-3 * (alpha / beta)
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        evidences.append(_evidence_from_spectrum(s, z, target_norm2, n, d, alpha, beta)[0] / n)
    return float(np.mean(evidences))


@SCORES.register("logme")
def logme_score(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME for classification labels."""
    return logme(features, labels)


@SCORES.register("hscore")
def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score: tr(cov(f)⁻¹ cov(E[f | y])), with a shrunk cov(f).

    Shape:
        features (N, D), labels (N,) -> scalar
    """
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    features = features - features.mean(axis=0)
    covariance = LedoitWolf(assume_centered=True).fit(features).covariance_
    labels = np.asarray(labels)
    class_means = np.zeros_like(features)
    for label in np.unique(labels):
        members = labels == label
        class_means[members] = features[members].mean(axis=0)
    between = class_means.T @ class_means / len(features)
    return float(np.trace(np.linalg.solve(covariance, between)))


def cross_validated_accuracy(estimator: object, features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(5, np.min(np.unique(labels, return_counts=True)[1])))
    if folds < 2:
        raise ValueError("cross-validated scores need at least 2 examples of every class in the sample")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pipeline = make_pipeline(StandardScaler(), estimator)
    return float(cross_val_score(pipeline, features, labels, cv=splitter, scoring="accuracy").mean())


@SCORES.register("linear_probe")
def linear_probe_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """5-fold cross-validated accuracy of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression

    return cross_validated_accuracy(LogisticRegression(max_iter=2000), features, labels)


@SCORES.register("knn")
def knn(features: np.ndarray, labels: np.ndarray) -> float:
    """5-fold cross-validated accuracy of a 5-nearest-neighbour classifier on standardised features."""
    from sklearn.neighbors import KNeighborsClassifier

    return cross_validated_accuracy(KNeighborsClassifier(n_neighbors=5), features, labels)




def _source_probabilities(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or (probabilities < 0).any() or \
            not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("source-classifier scores take (N, Z) probabilities: rows of non-negative numbers "
                         "summing to 1 (a softmax over the source classes)")
    return probabilities


def _label_indices(labels: np.ndarray) -> tuple[np.ndarray, int]:
    classes, indices = np.unique(np.asarray(labels), return_inverse=True)
    return indices.reshape(-1), len(classes)


@SOURCE_SCORES.register("leep")
def leep(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: the average log-likelihood of the labels under the "expected empirical predictor" that maps
    the source classifier's soft prediction θ(x) ∈ Δ^Z through the empirical conditional P̂(y | z):

        P̂(y, z) = 1/N Σ_{i: y_i = y} θ(x_i)_z,   P̂(y | z) = P̂(y, z) / Σ_y' P̂(y', z),
        LEEP = 1/N Σ_i log Σ_z P̂(y_i | z) θ(x_i)_z   (≤ 0; nearer 0 transfers better).

    Shape:
        probabilities (N, Z), labels (N,) -> scalar
    """
    probabilities = _source_probabilities(probabilities)
    indices, classes = _label_indices(labels)
    joint = np.zeros((classes, probabilities.shape[1]))
    np.add.at(joint, indices, probabilities)
    joint /= len(probabilities)
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)  # P(y | z), columns sum to 1
    likelihood = np.einsum("nz,nz->n", probabilities, conditional[indices])
    return float(np.mean(np.log(np.maximum(likelihood, 1e-300))))


@SOURCE_SCORES.register("nce")
def nce(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """NCE: the negative conditional entropy of the target labels given the source classifier's hard
    prediction z_i = argmax θ(x_i), from their empirical joint distribution:

        P̂(y, z) = #{i: y_i = y, z_i = z} / N,   NCE = −H(Y | Z) = Σ_{y,z} P̂(y, z) log (P̂(y, z) / P̂(z))

    (≤ 0; 0 when the source prediction determines the label).

    Shape:
        probabilities (N, Z), labels (N,) -> scalar
    """
    probabilities = _source_probabilities(probabilities)
    indices, classes = _label_indices(labels)
    joint = np.zeros((classes, probabilities.shape[1]))
    np.add.at(joint, (indices, probabilities.argmax(axis=1)), 1.0)
    joint /= len(probabilities)
    marginal = joint.sum(axis=0, keepdims=True)
    present = joint > 0
    return float(np.sum(joint[present] * np.log((joint / np.maximum(marginal, 1e-300))[present])))

