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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosstune.batching import Batching, Split

logger = logging.getLogger(__name__)

GAP_SAMPLES = 500  # rows per domain whose features the proxy A-distance compares
WHAT_TO_TRY = ("freeze more of the backbone (freeze.depth), lower finetune.lr, pull towards the pretrained "
               "weights (finetune.l2sp, finetune.bss), rank other backbones (backbone.select: score), or set "
               "evaluate.guard: fallback to export the scratch model when it validates better")


def random_init_model(initial_dir: str | Path, seed: int) -> tuple[Any, dict[str, Any]]:
    """The attached model's architecture and head, with a randomly initialised (seeded) backbone and
    nothing frozen: the no-transfer alternative."""
    from safetensors.torch import load_file

    from crosstune.modeling import build_transfer_model, load_transfer_model
    from crosstune.vision import rebuild_vision_backbone

    template, config = load_transfer_model(initial_dir)
    torch.manual_seed(seed)
    if template.modality == "image":
        backbone: torch.nn.Module = rebuild_vision_backbone(config["backbone"])
    else:
        from transformers import AutoModel

        backbone = AutoModel.from_config(template.backbone.config)
    head = config["head"]
    model = build_transfer_model(backbone, task=config["task"], labels=config["labels"], head_type=head["type"],
                                 pooling=config.get("pooling", "mean"), dropout=head["dropout"],
                                 hidden_dim=head["hidden_dim"], seed=seed)
    weights = load_file(str(Path(initial_dir) / "model.safetensors"))
    model.head.load_state_dict({key[len("head."):]: value for key, value in weights.items()
                                if key.startswith("head.")})
    model.spec = dict(template.spec, freeze={"depth": 0, "patterns": []})
    return model, config


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


def domain_gap(model: Any, source: Split, target: Split, batching: Batching, device: str, seed: int) -> float:
    """Proxy A-distance between ``model``'s pooled features of a sample of each domain (0: the two are
    indistinguishable to a linear classifier, 2: perfectly separable)."""
    from crosstune.selection import proxy_a_distance

    source_features = pooled_features(model, source, batching, device)[gap_sample(len(source), seed)]
    target_features = pooled_features(model, target, batching, device)[gap_sample(len(target), seed)]
    return proxy_a_distance(source_features, target_features, seed)


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
