"""Training guards: stop on a non-finite loss or energy, after saving the last good state.

``check_finite`` runs inside ``training_step`` before the backward pass, so when it raises
``NonFiniteLossError`` the optimizer has not stepped and the weights are still those of the last
finite step. ``NonFiniteGuard.on_exception`` then saves a full Lightning checkpoint of that state
(weights, optimizer, loop and data-loader position) and adds its path to the error message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite loss or loss term, with the step, the terms and the batch's row indices."""

    def __init__(self, message: str, step: int, terms: list[str], example_ids: dict[str, list[int]]) -> None:
        super().__init__(message)
        self.step = step
        self.terms = terms
        self.example_ids = example_ids
        self.checkpoint_path: Path | None = None


def batch_example_ids(batch: Mapping[str, Any]) -> dict[str, list[int]]:
    """Row indices of every part of a batch: ``{"forget": [...], "retain": [...], ...}`` or ``{"batch": [...]}``."""
    if "index" in batch:
        return {"batch": [int(i) for i in batch["index"]]}
    return {
        part: [int(i) for i in value["index"]]
        for part, value in batch.items()
        if isinstance(value, Mapping) and "index" in value
    }


def check_finite(loss: Tensor, terms: Mapping[str, Tensor], batch: Mapping[str, Any], step: int, objective: str) -> None:
    """Raise ``NonFiniteLossError`` when the loss or any logged term (energies included) is NaN or infinite."""
    values = {"loss": loss, **terms}
    values = {name: value.detach() for name, value in values.items()}
    # One device-to-host sync per step: stack the checks before reading them.
    finite = torch.stack([torch.isfinite(value).all() for value in values.values()])
    if bool(finite.all()):
        return
    bad = {name: float(value) for (name, value), ok in zip(values.items(), finite.tolist()) if not ok}

    example_ids = batch_example_ids(batch)
    finite_terms = {name: round(float(value), 6) for name, value in values.items() if name not in bad}
    message = (
        f"non-finite {', '.join(f'{name}={value}' for name, value in bad.items())} at global step {step} "
        f"(objective {objective}; finite terms {finite_terms}); batch row indices {example_ids}. "
        "Lower the learning rate, or check those rows"
    )
    raise NonFiniteLossError(message, step, list(bad), example_ids)


class NonFiniteGuard(Callback):
    """Save a checkpoint of the last good state when training stops on ``NonFiniteLossError``.

    Args:
        dirpath: folder of the checkpoint; unset uses the ``ModelCheckpoint`` folder, else the log dir.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def _folder(self, trainer: L.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        checkpoint_callback = trainer.checkpoint_callback
        if checkpoint_callback is not None and getattr(checkpoint_callback, "dirpath", None):
            return Path(checkpoint_callback.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, NonFiniteLossError):
            return
        # NOTE: save_checkpoint waits on a barrier across processes, so with several devices this
        # works only when every rank raised. Only single-process training is tested.
        path = self._folder(trainer) / f"last-finite-step{exception.step}.ckpt"
        # A full checkpoint (optimizer and loop state too), so the run can resume from it.
        trainer.save_checkpoint(path, weights_only=False)
        exception.checkpoint_path = path
        exception.args = (f"{exception.args[0]}. Saved the last finite state to {path}",)
        log.error("Stopped training: %s", exception.args[0])
