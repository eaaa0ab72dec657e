"""scratch: the negative-transfer guard's no-transfer model, trained in a stage of its own.

The same architecture and head as the attached model, from random initialisation, trained on the same data
(target labels, source domain and adaptation loss alike) with the same ``finetune`` params and budget, except
one: it keeps its single best validation epoch (``select_window: 1``) whatever the fine-tuned model's rule.
That is the choice most favourable to the rival, so a positive ``transfer_gain`` is never the epoch rule's
doing: a model trained from random weights zig-zags on validation, and the smoothed rule kept the dip between
two peaks on the text default (test macro-F1 0.216 against 0.445 for its best epoch). As its own stage it
trains once per change of what it reads: editing a metric or a baseline reruns evaluate only.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from crosstune.config import DEFAULT_PARAMS_PATH, load_section, to_dict
from crosstune.io import atomic_directory, write_json

logger = logging.getLogger(__name__)


def scratch_stage(initial_dir: str, encoded_dir: str, model_dir: str,
                  params_path: str = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """Train the scratch model into ``model_dir`` (``evaluate.guard`` report or fallback), or record that
    the guard is off (``guard.json`` only)."""
    from crosstune.model.saved import GUARD_RECORD

    guard = load_section("evaluate", params_path).guard
    if guard == "off":
        logger.info("scratch: evaluate.guard is off; no scratch model is trained")
        with atomic_directory(model_dir) as staging:
            write_json(staging / GUARD_RECORD, {"guard": "off", "scratch_model": None})
        return {"guard": "off"}

    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.data.prepared import encoded_has_source
    from crosstune.model.scratch import random_init_model
    from crosstune.model.transfer_model import (
        load_tokenizer,
        load_transfer_model,
        save_transfer_model,
    )
    from crosstune.runtime import setup
    from crosstune.training.loop import train

    base, finetune = load_section("base", params_path), load_section("finetune", params_path)
    finetune = dataclasses.replace(finetune, select_window=1)  # the rival's most favourable epoch (see above)
    augment = load_section("augment", params_path)
    device = setup(base)
    attached, config = load_transfer_model(initial_dir)
    scratch = random_init_model(attached, config, base.seed)
    del attached
    encoded = Path(encoded_dir)
    train_split = load_any_split(encoded / "train.safetensors")
    validation_split = load_any_split(encoded / "validation.safetensors")
    source = load_any_split(encoded / "source.safetensors") if encoded_has_source(encoded_dir) else None
    logger.info("scratch: training the %s model from random initialisation on the same data and budget "
                "(%d train / %d validation examples, device %s)", scratch.modality, len(train_split),
                len(validation_split), device)
    batching = batching_for(config, finetune.batch_size, finetune.max_length, augment)
    result = train(scratch, train_split, validation_split, finetune, base.seed, device, batching=batching,
                   source_split=source)
    scratch.to("cpu")
    tokenizer = load_tokenizer(initial_dir) if scratch.modality == "text" else None
    with atomic_directory(model_dir) as staging:
        save_transfer_model(scratch, staging, tokenizer, extra={"max_length": finetune.max_length})
        write_json(staging / GUARD_RECORD, {"guard": guard, "scratch_model": "random initialisation, same "
                                          "architecture, data and finetune params"})
        write_json(staging / "params.json", {"base": to_dict(base), "finetune": to_dict(finetune),
                                             "freeze": scratch.spec["freeze"], "head": config["head"],
                                             "pooling": config["pooling"], "initialisation": "random"})
        write_json(staging / "train_history.json", result.history)
    return {"guard": guard, "best_epoch": result.best_epoch, **result.best_metrics}
