"""The negative-transfer guard's verdict: did starting from the pretrained weights, and then fine-tuning
them, actually help?

Three models trained on the same data answer it. The scratch stage (:mod:`crosstune.pipeline.scratch`)
trains the same architecture from random initialisation with the same params and budget; the probe stage
(:mod:`crosstune.pipeline.probe`) fits the head alone on the frozen pretrained features. ``transfer_gain`` =
fine-tuned minus scratch on the test headline metric; below zero the pretrained weights hurt (Wang et al.,
"Characterizing and Avoiding Negative Transfer", CVPR 2019, https://arxiv.org/abs/1811.09751).
``finetuning_gain`` = fine-tuned minus probe; below zero fine-tuning distorted features that were better
left frozen (Kumar et al., ICLR 2022, https://arxiv.org/abs/2202.10054). With ``evaluate.guard: fallback``
the model exported is the one of the three that validates best (ties: fine-tuned, then probe), so the
choice never looks at test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from crosstune.data.batching import Batching, Split

logger = logging.getLogger(__name__)

WHAT_TO_TRY = ("freeze more of the backbone (freeze.depth), lower finetune.lr, start from the fitted probe "
               "(finetune.head_init: probe), pull towards the pretrained weights (finetune.l2sp, finetune.bss), "
               "rank other backbones (backbone.select: score), or set evaluate.guard: fallback to export whichever "
               "of the fine-tuned, probe and scratch models validates best")
GUARD_MODELS = ("finetuned", "probe", "scratch")  # the fallback's candidates, in the order that wins a tie


@dataclass
class GuardOutcome:
    """What the guard found: its metrics, each candidate's test outputs, and the model to export."""

    metrics: dict[str, Any]
    test_outputs: dict[str, Any]
    exported: str = "finetuned"


def judge_transfer(models: dict[str, Any], splits: dict[str, Split], batching: Batching, device: str, mode: str,
                   test_metrics: dict[str, Any], headline: str) -> GuardOutcome:
    """Compare the fine-tuned model (``models["finetuned"]``, whose test scores are ``test_metrics``) with
    ``models["scratch"]`` and ``models["probe"]`` on test (``transfer_gain``, ``finetuning_gain``) and on
    validation (what ``fallback`` decides by)."""
    from crosstune.inference.outputs import predict_outputs, score_outputs

    finetuned = models["finetuned"]
    task, labels = finetuned.spec["task"], finetuned.spec["labels"]
    test_outputs: dict[str, Any] = {}
    scores = {"finetuned": test_metrics}
    for name in ("scratch", "probe"):
        test_outputs[name] = predict_outputs(models[name], splits["test"], batching, device)
        scores[name] = score_outputs(test_outputs[name], splits["test"], task, labels, per_class=False)
    gain = test_metrics[headline] - scores["scratch"][headline]
    metrics: dict[str, Any] = {"guard": mode, "transfer_gain": gain,
                               "finetuning_gain": test_metrics[headline] - scores["probe"][headline],
                               "negative_transfer": flag_negative_transfer(gain, headline, test_metrics[headline],
                                                                           scores["scratch"][headline])}
    for key in ("accuracy", "f1_macro", "r2", "mae"):
        if key in scores["scratch"]:
            for name in GUARD_MODELS:
                metrics[f"{name}_{key}"] = scores[name][key]
    if metrics["negative_transfer"]:
        metrics["negative_transfer_advice"] = WHAT_TO_TRY
    validation = {name: score_outputs(predict_outputs(models[name], splits["validation"], batching, device),
                                      splits["validation"], task, labels, per_class=False)[headline]
                  for name in GUARD_MODELS}
    metrics.update({f"{name}_validation_{headline}": value for name, value in validation.items()})
    exported = choose_export(validation, headline) if mode == "fallback" else "finetuned"
    if exported != "finetuned":
        logger.warning("guard: fallback: the %s model validates better than the fine-tuned one (%s %.4f vs %.4f); it "
                       "is the exported model", exported, headline, validation[exported], validation["finetuned"])
    return GuardOutcome(metrics, test_outputs, exported)


def choose_export(validation: dict[str, float], headline: str) -> str:
    """The candidate with the best validation ``headline`` metric (higher is better for f1_macro and r2);
    a tie goes to the earlier of :data:`GUARD_MODELS`, so fine-tuning is kept unless something beats it."""
    best = GUARD_MODELS[0]
    for name in GUARD_MODELS[1:]:
        if validation[name] > validation[best]:
            best = name
    return best


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
