"""Every registry, parametrised over every entry: a new entry is tested the moment it is registered.

Image and audio backbones (tests/test_backbones.py, tests/test_freezing.py), heads and poolings
(tests/test_heads.py), optimizers and schedulers (tests/test_training.py), tasks and modalities
(tests/test_tasks.py) have their own parametrised tests; here: adaptation losses, baselines, task losses,
regularisers, transferability scores and the text backbones' loaders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosstune.backbones.registry import BACKBONES, backbone_names
from crosstune.config import BackboneParams, FinetuneParams
from crosstune.evaluation.baselines import (
    BASELINE_MODALITIES,
    BASELINE_TASKS,
    BASELINES,
    run_baseline,
)
from crosstune.methods.registry import ADAPTATIONS
from crosstune.methods.regularizers import REGULARIZERS
from crosstune.selection.scores import SCORES
from crosstune.tasks.registry import TASKS
from crosstune.training.losses import LOSSES


def _domains(shift: float, scale: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    source = torch.randn(32, 8, generator=generator)
    target = torch.randn(32, 8, generator=generator) * scale + shift
    return source, target


@pytest.mark.parametrize("name", ADAPTATIONS.names())
def test_every_adaptation_loss_is_a_finite_differentiable_scalar(name: str) -> None:
    torch.manual_seed(0)
    loss_module = ADAPTATIONS.get(name)(8, 3)
    if hasattr(loss_module, "progress"):  # adversarial: the reversal's lambda ramps up from 0 with progress
        loss_module.progress = 0.5
    source, target = _domains(shift=2.0, scale=3.0)
    source.requires_grad_(True)
    logits = torch.randn(32, 3)
    loss = loss_module(source, target, logits, logits)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert source.grad is not None and torch.isfinite(source.grad).all() and source.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["coral", "mmd"])
def test_statistical_alignment_losses_see_a_shift(name: str) -> None:
    loss_module = ADAPTATIONS.get(name)(8, 3)
    logits = torch.zeros(32, 3)
    same = float(loss_module(*_domains(shift=0.0), logits, logits))
    shifted = float(loss_module(*_domains(shift=2.0, scale=3.0), logits, logits))
    assert shifted > same + 0.1


@pytest.mark.parametrize("name", BASELINES.names())
def test_every_baseline_fits_and_predicts_its_task(name: str) -> None:
    rng = np.random.default_rng(0)
    task, modality = BASELINE_TASKS[name], (BASELINE_MODALITIES[name] or ("text",))[0]
    words = {"a": "great relief helped", "b": "awful nausea worse"}
    if task == "token_classification":  # word lists tagged word by word
        train = [["the", "patient", "had", "gout", "today"] if index % 2 else ["no", "gout", "here"]
                 for index in range(20)]
        targets = [["O", "O", "O", "B-D", "O"] if index % 2 else ["O", "B-D", "O"] for index in range(20)]
        predicted = run_baseline(name, task, train, targets, [["gout", "again"], ["nothing"]], seed=0)
        assert predicted == [["B-D", "O"], ["O"]]
        return
    if modality == "text":
        train = [f"{words[label]} day {index}" for index, label in enumerate("ab" * 10)]
        test = [words["a"], words["b"]]
    else:
        train = np.stack([rng.random(16) + (0.0 if label == "a" else 1.0) for label in "ab" * 10])
        test = np.stack([rng.random(16), rng.random(16) + 1.0])
    targets = list("ab" * 10) if task == "classification" else [float(i % 2) for i in range(20)]
    predicted = run_baseline(name, task, train, targets, test, seed=0, modality=modality)
    assert len(predicted) == 2
    if task == "classification":
        assert set(predicted) <= {"a", "b"}
        if name != "majority":
            assert predicted == ["a", "b"]
    else:
        assert all(np.isfinite(value) for value in predicted)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_on_its_task(name: str) -> None:
    suited = [task for task in TASKS if name in TASKS.get(task).losses]
    assert suited, f"loss {name!r} suits no task: list it in a task's losses"
    task = suited[0]
    loss_fn = TASKS.get(task).build_loss(name, None, 0.0)
    if task == "classification":
        outputs, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
        perfect = torch.nn.functional.one_hot(targets, 3).float() * 20
    elif task == "token_classification":  # (B, T, tags) against (B, T), -100 where a token is skipped
        outputs, targets = torch.randn(2, 3, 3), torch.tensor([[0, 1, -100], [2, -100, 1]])
        perfect = torch.nn.functional.one_hot(targets.clamp(min=0), 3).float() * 20
    else:
        outputs, targets = torch.randn(4, 1), torch.randn(4)
        perfect = targets[:, None].clone()
    loss = loss_fn(outputs, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert float(loss_fn(perfect, targets)) < float(loss) + 1e-6


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_every_regularizer_is_zero_or_small_at_the_start_and_a_finite_scalar(name: str, attached) -> None:
    from crosstune.transfer_model.storage import load_transfer_model

    model, _ = load_transfer_model(attached["initial"])
    regularizer = REGULARIZERS.get(name)(model, FinetuneParams(**{name: 0.1}))
    features = torch.randn(8, model.feature_dim)
    value = regularizer(model, features).detach()
    assert value.dim() == 0 and torch.isfinite(value) and float(value) >= 0.0


@pytest.mark.parametrize("name", SCORES.names())
def test_every_score_ranks_separable_features_above_shuffled_labels(name: str) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    features = rng.normal(size=(90, 6)) + labels[:, None] * 2.0
    shuffled = rng.permutation(labels)
    assert SCORES.get(name)(features, labels) > SCORES.get(name)(features, shuffled)


@pytest.mark.parametrize("name", backbone_names("text"))
def test_every_text_backbone_loads_offline_and_encodes(name: str) -> None:
    from crosstune.backbones.zoo import ZOO

    if name in ZOO and not ZOO.get(name).installed():
        pytest.skip(f"{name} is not installed here ({ZOO.get(name).install}); tests/test_backbones.py checks its error")
    texts = ["the drug helped a lot", "terrible nausea every day"] * 5
    loaded = BACKBONES.get(name).loader()(BackboneParams(name=name, max_length=32), texts, 0)
    batch = loaded.tokenizer(texts[:2], return_tensors="pt", padding=True)
    with torch.inference_mode():
        hidden = loaded.model(**batch).last_hidden_state
    assert hidden.shape[:2] == batch["input_ids"].shape and hidden.shape[2] == loaded.model.config.hidden_size
    assert torch.isfinite(hidden).all()
