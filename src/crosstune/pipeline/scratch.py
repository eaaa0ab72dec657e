"""scratch: the negative-transfer guard's no-transfer model, trained in a stage of its own.

The same architecture and head as the attached model, from random initialisation, trained on the same data
(target labels, source domain and adaptation loss alike) with the same ``finetune`` params and budget, except
one: it keeps its single best validation epoch (``select_window: 1``) whatever the fine-tuned model's rule.
That is the choice most favourable to the rival, so a positive ``transfer_gain`` is never the epoch rule's
doing: a model trained from random weights zig-zags on validation, and the smoothed rule kept the dip between
two peaks on the text default (test macro-F1 0.216 against 0.445 for its best epoch). As its own stage it
trains once per change of what it reads: editing a metric reruns evaluate only.

With ``evaluate.scratch: auto`` (the default) it first compares the fine-tuned model with the learned
baselines on validation and trains only when that leaves the answer open
(:func:`crosstune.evaluation.guard.scratch_decision`); the decision and its figures go to ``guard.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    AugmentParams,
    BaseParams,
    EvaluateParams,
    FinetuneParams,
    load_section,
    to_dict,
)
from crosstune.io import atomic_directory, write_json

logger = logging.getLogger(__name__)


def scratch_stage(initial_dir: str, encoded_dir: str, model_dir: str, params_path: str = DEFAULT_PARAMS_PATH,
                  finetuned_dir: str | None = None, prepared_dir: str | None = None) -> dict[str, Any]:
    """Train the scratch model into ``model_dir`` (``evaluate.guard`` report or fallback), or record that
    the guard is off or that the evidence made it needless (``guard.json`` only). Without ``finetuned_dir``
    and ``prepared_dir`` there is no evidence to weigh and it trains."""
    from crosstune.transfer_model.settings import GUARD_RECORD

    evaluate = load_section(EvaluateParams, params_path)
    guard = evaluate.guard
    if guard == "off":
        logger.info("scratch: evaluate.guard is off; no scratch model is trained")
        with atomic_directory(model_dir) as staging:
            write_json(staging / GUARD_RECORD, {"guard": "off", "scratch_model": None})
        return {"guard": "off"}
    form = _model_form(initial_dir)
    if form == "recogniser":
        reason = ("the guard compares a recogniser with its zero-shot self (the probe stage), not with one trained "
                  "from random weights: a few hundred utterances teach a random recogniser nothing")
        logger.info("scratch: not trained: %s", reason)
        with atomic_directory(model_dir) as staging:
            write_json(staging / GUARD_RECORD, {"guard": guard, "scratch_model": None, "skipped": reason,
                                                "evidence": {}})
        return {"guard": guard, "scratch_model": "skipped"}
    if form == "detector":  # no learned baseline draws boxes: nothing to weigh, the guard needs it trained
        from crosstune.evaluation.guard import ScratchDecision

        decision = ScratchDecision(True, "no learned baseline finds objects, so only a detector trained from random "
                                         "weights tells what the pretrained backbone brought", {})
    else:
        decision = _decide(evaluate, encoded_dir, finetuned_dir, prepared_dir, params_path)
    if not decision.train:
        logger.info("scratch: not trained (evaluate.scratch: auto): %s", decision.reason)
        with atomic_directory(model_dir) as staging:
            write_json(staging / GUARD_RECORD, {"guard": guard, "scratch_model": None, "skipped": decision.reason,
                                                "evidence": decision.evidence})
        return {"guard": guard, "scratch_model": "skipped"}
    logger.info("scratch: training it: %s", decision.reason)

    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared_dir import encoded_has_source
    from crosstune.modalities import get_modality
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.optimization import check_names
    from crosstune.training.run_context import training_context
    from crosstune.transfer_model.random_init import random_init_model
    from crosstune.transfer_model.storage import (
        load_transfer_model,
        save_transfer_model,
    )

    base, finetune = load_section(BaseParams, params_path), load_section(FinetuneParams, params_path)
    finetune = dataclasses.replace(finetune, select_window=1)  # the rival's most favourable epoch (see above)
    augment = load_section(AugmentParams, params_path)
    check_names(finetune)
    context = training_context(base, finetune)
    attached, config = load_transfer_model(initial_dir)
    if form == "detector":
        from crosstune.detection.stages import random_init_detector

        scratch = random_init_detector(attached, config, base.seed)
    else:
        scratch = random_init_model(attached, config, base.seed)
    del attached
    encoded = Path(encoded_dir)
    train_split = load_any_split(encoded / "train.safetensors")
    validation_split = load_any_split(encoded / "validation.safetensors")
    source = load_any_split(encoded / "source.safetensors") if encoded_has_source(encoded_dir) else None
    logger.info("scratch: training the %s model from random initialisation on the same data and budget "
                "(%d train / %d validation examples, device %s)", scratch.modality, len(train_split),
                len(validation_split), context.device)
    batching = batching_for(config, finetune.batch_size, finetune.max_length, augment)
    result = train(scratch, TrainingData(train_split, validation_split, batching, None, source), finetune, base.seed,
                   context)
    scratch.to("cpu")
    with atomic_directory(model_dir) as staging:
        save_transfer_model(scratch, staging, get_modality(scratch.modality).load_tokenizer(initial_dir),
                            extra={"max_length": finetune.max_length})
        write_json(staging / GUARD_RECORD, {"guard": guard, "scratch_model": "random initialisation, same "
                                          "architecture, data and finetune params", "trained": decision.reason,
                                          "evidence": decision.evidence})
        write_json(staging / "params.json", {"base": to_dict(base), "finetune": to_dict(finetune),
                                             "freeze": scratch.spec["freeze"], "head": config["head"],
                                             "pooling": config.get("pooling"), "initialisation": "random"})
        write_json(staging / "train_history.json", result.history)
    return {"guard": guard, "best_epoch": result.best_epoch, **result.best_metrics}


def _model_form(initial_dir: str) -> str:
    """The attached model's form (:attr:`crosstune.tasks.base.Task.model_form`: a new head, a recogniser whose
    head is pretrained, a detector), read from its config without torch."""
    from crosstune.io import read_json
    from crosstune.tasks.registry import TASKS
    from crosstune.transfer_model.settings import model_settings

    task = model_settings(read_json(Path(initial_dir) / "config.json")).get("task", "")
    return TASKS.get(task).model_form if task in TASKS else "head"


def _decide(evaluate: Any, encoded_dir: str, finetuned_dir: str | None, prepared_dir: str | None,
            params_path: str) -> Any:
    """``evaluate.scratch``'s decision: the fine-tuned model's and each baseline's validation headline metric."""
    from crosstune.evaluation.guard import scratch_decision

    if evaluate.scratch == "always" or finetuned_dir is None or prepared_dir is None:
        return scratch_decision(evaluate.scratch, None, {}, None)
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.evaluation.baselines import baseline_inputs, baseline_scores
    from crosstune.inference.outputs import predict_outputs, score_outputs
    from crosstune.runtime import setup
    from crosstune.tasks.registry import TASKS
    from crosstune.transfer_model.settings import saved_max_length
    from crosstune.transfer_model.storage import load_transfer_model

    base = load_section(BaseParams, params_path)
    device = setup(base)
    model, config = load_transfer_model(finetuned_dir)
    task = TASKS.get(config["task"])
    headline = task.headline
    splits = {name: load_any_split(Path(encoded_dir) / f"{name}.safetensors")
              for name in ("train", "validation", "source")}
    validation = splits["validation"]
    batching = batching_for(config, evaluate.batch_size, saved_max_length(config, finetuned_dir))
    finetuned = score_outputs(predict_outputs(model.to(device), validation, batching, device), validation,
                              config["task"], config["labels"], per_class=False)[headline]
    train_inputs, train_targets, inputs = baseline_inputs(splits, prepared_dir, config, "validation")
    baselines = baseline_scores(evaluate.baselines, config, validation.labels.tolist(), train_inputs, train_targets,
                                inputs, base.seed)
    return scratch_decision(evaluate.scratch, finetuned, {name: scores[headline] for name, scores in baselines.items()},
                            task)
