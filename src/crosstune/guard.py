"""The negative-transfer guard: did starting from the pretrained weights actually help?

Beside the fine-tuned model, evaluate trains the same architecture from random initialisation on the same
data (target labels, source domain and adaptation loss alike), with the same params and budget, and fits
a linear probe (logistic regression) on the pretrained backbone's frozen features. ``transfer_gain`` =
fine-tuned minus scratch on the test headline metric; below zero the pretrained weights hurt (Wang et al.,
"Characterizing and Avoiding Negative Transfer", CVPR 2019), and the metrics and logs say so.

Also here: the domain gap (proxy A-distance) between source and target features, before and after training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crosstune.batching import Batching, Split

logger = logging.getLogger(__name__)

GAP_SAMPLES = 500  # rows per domain whose features the proxy A-distance compares
WHAT_TO_TRY = ("freeze more of the backbone (freeze.depth), lower finetune.lr, pull towards the pretrained "
               "weights (finetune.l2sp, finetune.bss), rank other backbones (backbone.select: score), or set "
               "evaluate.guard: fallback to export the scratch model when it validates better")


def random_init_model(attached: Any, config: dict[str, Any], seed: int) -> Any:
    """The ``attached`` model's architecture and head (as attached, before training), with a randomly
    initialised (seeded) backbone and nothing frozen: the no-transfer alternative. ``config`` is the
    attached model's ``config.json``."""
    from crosstune.modeling import build_transfer_model
    from crosstune.vision import rebuild_vision_backbone

    torch.manual_seed(seed)
    if attached.modality == "image":
        backbone: torch.nn.Module = rebuild_vision_backbone(config["backbone"])
    else:
        from transformers import AutoModel

        backbone = AutoModel.from_config(attached.backbone.config)
    head = config["head"]
    model = build_transfer_model(backbone, task=config["task"], labels=config["labels"], head_type=head["type"],
                                 pooling=config.get("pooling", "mean"), dropout=head["dropout"],
                                 hidden_dim=head["hidden_dim"], seed=seed)
    model.head.load_state_dict(attached.head.state_dict())
    model.spec = dict(attached.spec, freeze={"depth": 0, "patterns": []})
    return model


@torch.inference_mode()
def pooled_features(model: Any, split: Split, batching: Batching, device: str) -> np.ndarray:
    """The backbone's pooled features (what the head sees) for every row of ``split``, in order.

    Shape:
        -> (N, feature_dim) float32
    """
    model.eval()
    features = np.zeros((len(split), model.feature_dim), dtype=np.float32)
    for batch in batching.evaluate(split):
        batch = batch.to(device)
        features[batch.indices.numpy()] = model.features(**batch.inputs).float().cpu().numpy()
    return features


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 seed: int) -> np.ndarray:
    """Class predictions of a standardised, class-balanced logistic regression on frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                               random_state=seed))
    probe.fit(train_features, train_labels)
    return probe.predict(test_features)


def gap_sample(size: int, seed: int) -> np.ndarray:
    """A seeded sample of at most :data:`GAP_SAMPLES` row positions."""
    rows = np.arange(size)
    if size <= GAP_SAMPLES:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, GAP_SAMPLES, replace=False))


def domain_gap(source_features: np.ndarray, target_features: np.ndarray, seed: int) -> float:
    """Proxy A-distance between a seeded sample of each domain's features (0: the two are
    indistinguishable to a linear classifier, 2: perfectly separable)."""
    from crosstune.selection import proxy_a_distance

    return proxy_a_distance(source_features[gap_sample(len(source_features), seed)],
                            target_features[gap_sample(len(target_features), seed)], seed)


class FeatureCache:
    """Pooled features of one model, extracted once per split: the linear probe and the domain gap read
    the same pretrained train/source features, and a second pass over them would double evaluate's cost."""

    def __init__(self, model: Any, batching: Batching, device: str) -> None:
        self.model, self.batching, self.device = model, batching, device
        self._features: dict[str, np.ndarray] = {}

    def __call__(self, name: str, split: Split) -> np.ndarray:
        """Features of ``split`` (cached under ``name``)."""
        if name not in self._features:
            self._features[name] = pooled_features(self.model, split, self.batching, self.device)
        return self._features[name]


@dataclass
class GuardOutcome:
    """What the guard found: its metrics, the scratch model (to save) and its test outputs, and whether
    ``fallback`` picked the scratch model for export."""

    metrics: dict[str, Any]
    scratch: Any
    scratch_outputs: Any
    use_scratch: bool = False


def probe_predictions(features: FeatureCache, splits: dict[str, Split], seed: int) -> np.ndarray:
    """Test-split class predictions of :func:`linear_probe` fitted on every labelled training row (target
    and source domain) of the frozen pretrained features."""
    parts = [("train", splits["train"])] + ([("source", splits["source"])] if len(splits["source"]) else [])
    masks = [(name, split, (split.labels >= 0).numpy()) for name, split in parts]
    train_features = np.concatenate([features(name, split)[mask] for name, split, mask in masks])
    train_labels = np.concatenate([split.labels.numpy()[mask] for _, split, mask in masks])
    return linear_probe(train_features, train_labels, features("test", splits["test"]), seed)


def run_guard(model: Any, attached: FeatureCache, attached_config: dict[str, Any], splits: dict[str, Split],
              batching: Batching, train_batching: Batching, finetune: Any, seed: int, device: str, mode: str,
              test_metrics: dict[str, Any], headline: str) -> GuardOutcome:
    """Train the scratch model (same architecture, data, params and budget, random start), compare it with
    the fine-tuned ``model`` on test (``transfer_gain``) and validation (``fallback``), and score the linear
    probe on the ``attached`` (pretrained, untrained) model's features (classification only)."""
    from crosstune.inference import predict_outputs, score_outputs
    from crosstune.metrics import classification_metrics
    from crosstune.training import train

    task, labels = model.spec["task"], model.spec["labels"]
    logger.info("guard: training the %s model from random initialisation on the same data and budget",
                model.modality)
    scratch = random_init_model(attached.model, attached_config, seed)
    source = splits["source"] if len(splits["source"]) else None
    train(scratch, splits["train"], splits["validation"], finetune, seed, device, batching=train_batching,
          source_split=source)
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
        predicted = probe_predictions(attached, splits, seed)
        probe = classification_metrics(splits["test"].labels.tolist(), predicted.tolist(), labels, per_class=False)
        metrics.update({"probe_accuracy": probe["accuracy"], "probe_f1_macro": probe["f1_macro"]})
    return GuardOutcome(metrics, scratch, scratch_outputs, use_scratch)


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
