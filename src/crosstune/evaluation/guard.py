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

The scratch model costs as much as fine-tuning, so by default (``evaluate.scratch: auto``) the scratch stage
trains it only when the answer is unclear (:func:`scratch_decision`). A learned baseline (TF-IDF, pixel or MFCC
logistic regression) is a from-scratch learner too, and on small data the same transformer trained from random
weights stays below it (every task and seed of bench/recipes). When the fine-tuned model validates at least as
well as every learned baseline, scratch <= best baseline <= fine-tuned, and the scratch model could neither win
the fallback nor flag negative transfer. What this can miss: a task where the scratch model would beat every
learned baseline (large data, or a modality whose baselines are weak); ``evaluate.scratch: always`` trains it
whatever the evidence. Measured against the full guard in bench/guard/README.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from crosstune.data.batching import Batching, Split
from crosstune.tasks.base import Task

logger = logging.getLogger(__name__)

WHAT_TO_TRY = ("freeze more of the backbone (freeze.depth), lower finetune.lr, start from the fitted probe "
               "(finetune.head_init: probe), pull towards the pretrained weights (finetune.l2sp, finetune.bss), "
               "rank other backbones (backbone.select: score), or set evaluate.guard: fallback to export whichever "
               "of the fine-tuned, probe and scratch models validates best")
GUARD_MODELS = ("finetuned", "probe", "scratch")  # the fallback's candidates, in the order that wins a tie
TRIVIAL_BASELINES = ("majority", "mean")  # learn nothing from the inputs: no evidence about a from-scratch model


@dataclass
class ScratchDecision:
    """Whether the scratch stage trains its model, and the validation figures it decided by."""

    train: bool
    reason: str
    evidence: dict[str, float]


def scratch_decision(mode: str, finetuned_validation: float | None, baselines_validation: dict[str, float],
                     task: Task | None) -> ScratchDecision:
    """``evaluate.scratch``: ``always`` trains; ``auto`` skips when the fine-tuned model's validation headline
    metric (``task.headline``) is at least as good as every learned baseline's (``baselines_validation``: each
    baseline's, trivial ones ignored), so that scratch <= best baseline <= fine-tuned (module docstring)."""
    if mode == "always":
        return ScratchDecision(True, "evaluate.scratch: always", {})
    learned = {name: value for name, value in baselines_validation.items() if name not in TRIVIAL_BASELINES}
    if finetuned_validation is None or not learned or task is None:
        missing = "the fine-tuned model" if finetuned_validation is None else \
            "a learned baseline in evaluate.baselines (only trivial ones are listed)"
        return ScratchDecision(True, f"no evidence to skip it: {missing}", {})
    headline = task.headline
    best = next(iter(learned))
    for name, value in learned.items():
        if task.is_better(headline, value, learned[best]):
            best = name
    evidence = {f"finetuned_validation_{headline}": finetuned_validation,
                f"best_baseline_validation_{headline}": learned[best]}
    if not task.is_better(headline, learned[best], finetuned_validation):
        return ScratchDecision(False, f"the fine-tuned model validates at {headline} {finetuned_validation:.4f}, at "
                               f"least the best learned baseline's ({best} {learned[best]:.4f}), which a model "
                               f"trained from scratch on this data stays below", evidence)
    return ScratchDecision(True, f"the fine-tuned model validates at {headline} {finetuned_validation:.4f}, below "
                           f"baseline {best} ({learned[best]:.4f}): whether the pretrained weights helped is unclear",
                           evidence)


@dataclass
class GuardOutcome:
    """What the guard found: its metrics, each candidate's test outputs, and the model to export."""

    metrics: dict[str, Any]
    test_outputs: dict[str, Any]
    exported: str = "finetuned"


def judge_transfer(models: dict[str, Any], splits: dict[str, Split], batching: Batching, device: str, mode: str,
                   test_metrics: dict[str, Any], task: Task,
                   skipped: ScratchDecision | None = None) -> GuardOutcome:
    """Compare the fine-tuned model (``models["finetuned"]``, whose test scores are ``test_metrics``) with
    ``models["scratch"]`` and ``models["probe"]`` on test (``transfer_gain``, ``finetuning_gain``) and on
    validation (what ``fallback`` decides by). ``skipped``: the scratch stage's decision when it trained no
    scratch model (``models`` then has none); the verdict is its evidence."""
    from crosstune.inference.outputs import predict_outputs, score_outputs

    labels, headline = models["finetuned"].spec["labels"], task.headline
    compared = tuple(name for name in GUARD_MODELS if skipped is None or name != "scratch")
    test_outputs: dict[str, Any] = {}
    scores = {"finetuned": test_metrics}
    for name in compared[1:]:
        test_outputs[name] = predict_outputs(models[name], splits["test"], batching, device)
        scores[name] = score_outputs(test_outputs[name], splits["test"], task.name, labels, per_class=False)
    metrics: dict[str, Any] = {"guard": mode, "scratch_model": "trained" if skipped is None else "skipped"}
    if skipped is None:
        gain = task.gain(headline, test_metrics[headline], scores["scratch"][headline])
        metrics.update(transfer_gain=gain, negative_transfer=flag_negative_transfer(
            gain, headline, test_metrics[headline], scores["scratch"][headline]))
    else:
        logger.info("guard: no negative transfer, and no scratch model trained: %s", skipped.reason)
        metrics.update(negative_transfer=False, **{f"guard_{key}": value for key, value in skipped.evidence.items()})
    metrics["finetuning_gain"] = task.gain(headline, test_metrics[headline], scores["probe"][headline])
    for key in task.summary_metrics:
        if key in scores["probe"]:
            for name in compared:
                metrics[f"{name}_{key}"] = scores[name][key]
    if metrics["negative_transfer"]:
        metrics["negative_transfer_advice"] = WHAT_TO_TRY
    validation = {name: score_outputs(predict_outputs(models[name], splits["validation"], batching, device),
                                      splits["validation"], task.name, labels, per_class=False)[headline]
                  for name in compared}
    metrics.update({f"{name}_validation_{headline}": value for name, value in validation.items()})
    exported = choose_export(validation, task) if mode == "fallback" else "finetuned"
    if exported != "finetuned":
        logger.warning("guard: fallback: the %s model validates better than the fine-tuned one (%s %.4f vs %.4f); it "
                       "is the exported model", exported, headline, validation[exported], validation["finetuned"])
    return GuardOutcome(metrics, test_outputs, exported)


def choose_export(validation: dict[str, float], task: Task) -> str:
    """The candidate with the best validation headline metric (``task.headline``, whichever way it points);
    a tie goes to the earlier of :data:`GUARD_MODELS`, so fine-tuning is kept unless something beats it.
    ``validation`` may lack the scratch model (not trained: :func:`scratch_decision`)."""
    best = GUARD_MODELS[0]
    for name in GUARD_MODELS[1:]:
        if name in validation and task.is_better(task.headline, validation[name], validation[best]):
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


def refuse_baselines(baselines: Any, compared_with: str) -> None:
    """Tasks whose predictions are not one label per example (transcripts, boxes) have no learned baselines: a
    non-empty ``evaluate.baselines`` is refused, naming what the model is compared with instead."""
    from crosstune.errors import ConfigError

    if baselines:
        raise ConfigError(f"params.yaml: evaluate.baselines: {list(baselines)} score one label per example; "
                          f"{compared_with} instead: set evaluate.baselines: [].")


def guard_model_dir(directory: str | None, stage: str, guard: str, compared: str) -> str:
    """The directory of the ``stage`` model the guard compares ``compared`` ("the fine-tuned detector with the
    probe stage's") against; a clear error when it was not given or holds no model."""
    from pathlib import Path

    from crosstune.errors import ArtifactError

    if directory is None or not (Path(directory) / "config.json").is_file():
        where = f"{directory} holds none" if directory else f"no --{stage} directory was given"
        raise ArtifactError(f"params.yaml: evaluate.guard: {guard} compares {compared}, but {where}; run "
                            f"`dvc repro {stage}` or set evaluate.guard: off.")
    return directory
