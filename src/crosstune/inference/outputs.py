"""Batched, gradient-free forward passes over an encoded split, in the split's original order; what the
outputs mean (classes, values) is the task's (:mod:`crosstune.tasks`)."""

from __future__ import annotations

import torch

from crosstune.data.batching import Batching, Split
from crosstune.data.text_encoding import output_rows, place_outputs
from crosstune.freezing.policy import set_train_mode


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, split: Split, batching: Batching, device: str,
                    batch_size: int | None = None) -> torch.Tensor:
    """Raw model outputs (logits, or regression values) for every row of ``split``.

    Shape:
        -> (N, num_outputs) float32, row i for example i of the split; for a per-token task
        (W, num_outputs), row i for word i
    """
    was_training = model.training
    model.eval()
    outputs: torch.Tensor | None = None
    for batch in batching.evaluate(split, batch_size):
        batch = batch.to(device)
        result = model(**batch.inputs).float().cpu()
        if outputs is None:
            outputs = torch.empty((output_rows(split), result.shape[-1]), dtype=torch.float32)
        place_outputs(outputs, batch, result)
    if was_training:
        set_train_mode(model)  # frozen modules stay in eval mode
    if outputs is None:
        raise ValueError("cannot predict on an empty split")
    return outputs


def score_outputs(outputs: torch.Tensor, split: Split, task: str, labels: list[str],
                  per_class: bool = True) -> dict:
    """The split's metrics for ``outputs``, as task ``task`` scores them."""
    from crosstune.tasks.registry import TASKS

    return TASKS.get(task).score(split.labels.tolist(), outputs, labels, per_class=per_class)
