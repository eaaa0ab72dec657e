"""The negative-transfer guard's verdict: did starting from the pretrained weights actually help?

The scratch stage (:mod:`crosstune.pipeline.scratch`) trains the same architecture from random
initialisation on the same data, params and budget; evaluate compares it with the fine-tuned model here
and fits a linear probe (logistic regression) on the pretrained backbone's frozen features.
``transfer_gain`` = fine-tuned minus scratch on the test headline metric; below zero the pretrained weights
hurt (Wang et al., "Characterizing and Avoiding Negative Transfer", CVPR 2019,
https://arxiv.org/abs/1811.09751), and the metrics and logs say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from crosstune.data.batching import Batching, Split
from crosstune.evaluation.features import PooledFeatures

logger = logging.getLogger(__name__)

WHAT_TO_TRY = ("freeze more of the backbone (freeze.depth), lower finetune.lr, pull towards the pretrained "
               "weights (finetune.l2sp, finetune.bss), rank other backbones (backbone.select: score), or set "
               "evaluate.guard: fallback to export the scratch model when it validates better")


def fit_linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                     seed: int) -> np.ndarray:
    """Class predictions of a standardised, class-balanced logistic regression on frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                               random_state=seed))
    probe.fit(train_features, train_labels)
    return probe.predict(test_features)


@dataclass
class GuardOutcome:
    """What the guard found: its metrics, the scratch model's test outputs, and whether ``fallback``
    picked the scratch model for export."""

    metrics: dict[str, Any]
    scratch_outputs: Any
    use_scratch: bool = False


def probe_predictions(features: PooledFeatures, splits: dict[str, Split], seed: int) -> np.ndarray:
    """Test-split class predictions of :func:`fit_linear_probe` fitted on every labelled training row
    (target and source domain) of the frozen pretrained features."""
    parts = [("train", splits["train"])] + ([("source", splits["source"])] if len(splits["source"]) else [])
    masks = [(name, split, (split.labels >= 0).numpy()) for name, split in parts]
    train_features = np.concatenate([features(name, split)[mask] for name, split, mask in masks])
    train_labels = np.concatenate([split.labels.numpy()[mask] for _, split, mask in masks])
    return fit_linear_probe(train_features, train_labels, features("test", splits["test"]), seed)


def judge_transfer(model: Any, scratch: Any, pretrained: PooledFeatures, splits: dict[str, Split],
                   batching: Batching, seed: int, device: str, mode: str, test_metrics: dict[str, Any],
                   headline: str) -> GuardOutcome:
    """Compare the fine-tuned ``model`` with the trained ``scratch`` model on test (``transfer_gain``) and
    validation (``fallback``), and score the linear probe on the ``pretrained`` (attached, untrained)
    model's features (classification only)."""
    from crosstune.evaluation.metrics import classification_metrics
    from crosstune.inference.outputs import predict_outputs, score_outputs

    task, labels = model.spec["task"], model.spec["labels"]
    scratch_outputs = predict_outputs(scratch, splits["test"], batching, device)
    scratch_metrics = score_outputs(scratch_outputs, splits["test"], task, labels, per_class=False)
    gain = test_metrics[headline] - scratch_metrics[headline]
    metrics: dict[str, Any] = {"guard": mode, "transfer_gain": gain,
                               "negative_transfer": flag_negative_transfer(gain, headline, test_metrics[headline],
                                                                           scratch_metrics[headline])}
    for key in ("accuracy", "f1_macro", "r2", "mae"):
        if key in scratch_metrics:
            metrics[f"scratch_{key}"] = scratch_metrics[key]
            metrics[f"finetuned_{key}"] = test_metrics[key]
    if metrics["negative_transfer"]:
        metrics["negative_transfer_advice"] = WHAT_TO_TRY
    validation = {name: score_outputs(predict_outputs(candidate, splits["validation"], batching, device),
                                      splits["validation"], task, labels, per_class=False)[headline]
                  for name, candidate in (("finetuned", model), ("scratch", scratch))}
    metrics.update({f"{name}_validation_{headline}": value for name, value in validation.items()})
    use_scratch = mode == "fallback" and validation["scratch"] > validation["finetuned"]
    if use_scratch:
        logger.warning("guard: fallback: the scratch model validates better (%s %.4f vs %.4f); it is the exported "
                       "model", headline, validation["scratch"], validation["finetuned"])
    if task == "classification":
        predicted = probe_predictions(pretrained, splits, seed)
        probe = classification_metrics(splits["test"].labels.tolist(), predicted.tolist(), labels, per_class=False)
        metrics.update({"probe_accuracy": probe["accuracy"], "probe_f1_macro": probe["f1_macro"]})
    return GuardOutcome(metrics, scratch_outputs, use_scratch)


def flag_negative_transfer(gain: float, headline: str, finetuned: float, scratch: float) -> bool:
    """True (and a warning naming what to try) when the pretrained start did worse than random init."""
    if gain >= 0:
        logger.info("transfer gain %+.4f: the fine-tuned model's test %s %.4f beats training from scratch (%.4f)",
                    gain, headline, finetuned, scratch)
        return False
    logger.warning("NEGATIVE TRANSFER: the fine-tuned model's test %s %.4f is below the same architecture "
                   "trained from scratch on the same data and budget (%.4f, transfer_gain %+.4f). Try: %s.",
                   headline, finetuned, scratch, gain, WHAT_TO_TRY)
    return True
