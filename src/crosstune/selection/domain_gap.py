"""The domain gap: how far apart source and target features lie, for candidates (backbone stage) and
before/after fine-tuning (evaluate stage). Each measure is a plain function of two feature matrices.

- :func:`proxy_a_distance`: Ben-David et al., "Analysis of Representations for Domain Adaptation",
  NeurIPS 2007 (https://papers.nips.cc/paper/2983): 2 (1 - 2 eps), eps the error of a linear domain classifier.
- :func:`linear_mmd`: Gretton et al., "A Kernel Two-Sample Test", JMLR 2012, with the linear kernel.
"""

from __future__ import annotations

import numpy as np

from crosstune.selection.scores import cross_validated_accuracy


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """Proxy A-distance (Ben-David et al., 2007): 2 (1 − 2ε), ε the cross-validated error of a linear
    classifier telling source features from target features. 0: indistinguishable; 2: separable.

    Shape:
        source (Ns, D), target (Nt, D) -> scalar in [−2, 2] (in practice [0, 2])
    """
    from sklearn.linear_model import LogisticRegression

    features = np.vstack([source, target])
    domains = np.concatenate([np.zeros(len(source), dtype=int), np.ones(len(target), dtype=int)])
    error = 1.0 - cross_validated_accuracy(LogisticRegression(max_iter=2000), features, domains, seed)
    return 2.0 * (1.0 - 2.0 * error)


def linear_mmd(source: np.ndarray, target: np.ndarray) -> float:
    """Maximum mean discrepancy with a linear kernel: ||mean(source) − mean(target)||².

    Shape:
        source (Ns, D), target (Nt, D) -> scalar >= 0
    """
    difference = np.asarray(source, dtype=np.float64).mean(axis=0) - np.asarray(target, dtype=np.float64).mean(axis=0)
    return float(difference @ difference)


GAP_SAMPLES = 500  # rows per domain whose features the proxy A-distance compares


def gap_sample(size: int, seed: int) -> np.ndarray:
    """A seeded sample of at most :data:`GAP_SAMPLES` row positions."""
    rows = np.arange(size)
    if size <= GAP_SAMPLES:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, GAP_SAMPLES, replace=False))


def domain_gap(source_features: np.ndarray, target_features: np.ndarray, seed: int) -> float:
    """Proxy A-distance between a seeded sample of each domain's features (0: the two are
    indistinguishable to a linear classifier, 2: perfectly separable)."""
    return proxy_a_distance(source_features[gap_sample(len(source_features), seed)],
                            target_features[gap_sample(len(target_features), seed)], seed)
