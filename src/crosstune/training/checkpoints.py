"""Resumable training state: what the finetune stage writes after every epoch and reads after a crash.

``checkpoints/finetune/`` (a DVC ``persist`` output, so ``dvc repro`` leaves it in place) holds the
current weights, the best epoch's weights and those of the epochs not yet settled by the smoothed
selection (:mod:`crosstune.training.epoch_selection`; safetensors), optimizer, scheduler and grad-scaler
state and the RNG states (``torch.save`` of tensors and plain containers, read back with
``weights_only=True``), and ``state.json`` with the epoch, step, history and the run's fingerprint.
The directory is replaced atomically, so a kill at any moment leaves the last complete epoch.

A checkpoint is resumed only when its fingerprint (the finetune/base params and the content of every
input) matches: a run whose params or data changed starts from scratch. A finished run empties the
directory, so nothing of it can be resumed and DVC sees the same (empty) output on every branch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from crosstune.io import (
    atomic_directory,
    read_json,
    restore_interrupted_directory,
    write_json,
)

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"
PENDING_PREFIX = "pending-epoch-"  # pending-epoch-3.safetensors: epoch 3's weights, not yet settled


@dataclass
class TrainState:
    """Progress of one training run (JSON)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    best_epoch: int = 0
    best_value: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    bad_epochs: int = 0  # settled epochs since the best one (early stopping)
    selected_through: int = 0  # the last epoch whose smoothed select_metric was final and compared
    stopped_early: bool = False
    log: list[list[Any]] = field(default_factory=list)  # [step, {metric: value}] sent to dvclive, replayed on resume


def fingerprint(settings: dict[str, Any], inputs: Iterable[str | Path]) -> str:
    """A digest of the run's settings and the bytes of its input files (directories: every file in them)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in sorted(Path(item) for item in inputs):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


class Checkpointer:
    """Saves and restores the training state in ``directory`` for the run named by ``run_fingerprint``."""

    def __init__(self, directory: str | Path, run_fingerprint: str) -> None:
        self.directory = Path(directory)
        self.run_fingerprint = run_fingerprint

    def resumable(self) -> TrainState | None:
        """The saved state when it belongs to this run; else None (and a stale state is removed)."""
        restore_interrupted_directory(self.directory)
        state_path = self.directory / STATE_NAME
        if not state_path.is_file():
            return None
        saved = read_json(state_path)
        if saved.get("fingerprint") != self.run_fingerprint:
            logger.info("checkpoint %s belongs to other params or data: starting from scratch", self.directory)
        else:
            fields = {key: value for key, value in saved.items() if key in TrainState.__dataclass_fields__}
            return TrainState(**fields)
        self.finish()
        return None

    def save(self, state: TrainState, model: torch.nn.Module, best: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, generator: torch.Generator,
             extra: torch.nn.Module | None = None,
             pending: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
        """``extra``: a module trained beside the model (a domain discriminator); ``pending``: the weights
        of the epochs not settled yet, by epoch."""
        from safetensors.torch import save_file

        with atomic_directory(self.directory) as staging:
            if extra is not None and extra.state_dict():
                save_file({key: value.detach().contiguous().clone() for key, value in extra.state_dict().items()},
                          str(staging / "extra.safetensors"))
            save_file({key: value.detach().contiguous().clone() for key, value in model.state_dict().items()},
                      str(staging / "model.safetensors"))
            save_file({key: value.contiguous() for key, value in best.items()}, str(staging / "best.safetensors"))
            for epoch, weights in (pending or {}).items():
                save_file({key: value.contiguous() for key, value in weights.items()},
                          str(staging / f"{PENDING_PREFIX}{epoch}.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None}, staging / "optimizer.pt")
            rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, staging / "rng.pt")
            write_json(staging / STATE_NAME, {**asdict(state), "fingerprint": self.run_fingerprint})

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                generator: torch.Generator, extra: torch.nn.Module | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
        """Load everything saved into the given objects; returns the best epoch's weights and the pending
        epochs' weights (by epoch)."""
        from safetensors.torch import load_file

        device = next(model.parameters()).device
        model.load_state_dict(load_file(str(self.directory / "model.safetensors"), device=str(device)))
        if extra is not None and (self.directory / "extra.safetensors").is_file():
            extra.load_state_dict(load_file(str(self.directory / "extra.safetensors"), device=str(device)))
        best = load_file(str(self.directory / "best.safetensors"), device=str(device))
        pending = {int(path.name[len(PENDING_PREFIX):-len(".safetensors")]): load_file(str(path), device=str(device))
                   for path in sorted(self.directory.glob(f"{PENDING_PREFIX}*.safetensors"))}
        saved = torch.load(self.directory / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved["scaler"] is not None:
            scaler.load_state_dict(saved["scaler"])
        rng = torch.load(self.directory / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        generator.set_state(rng["generator"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return best, pending

    def finish(self) -> None:
        """Empty the directory once the run has finished: the model is saved elsewhere, and an empty
        directory hashes the same on every branch, so DVC never sees a finished run's checkpoint as a
        change (it would rerun the stage after every ``git checkout``)."""
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)
