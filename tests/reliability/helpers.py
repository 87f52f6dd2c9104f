"""Builders of small in-process training runs on the tiny test model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from eua.data.datamodule import TOFUDataModule


class LossRecorder(L.Callback):
    """Collects the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def make_datamodule(tofu_dir: Path, mode: str, batch_size: int = 4) -> TOFUDataModule:
    return TOFUDataModule(
        data_dir=str(tofu_dir),
        forget_split="forget01",
        retain_authors=1,
        mode=mode,
        eval_sets=["forget"],
        eval_limit=3,
        max_length=128,
        batch_size=batch_size,
        eval_batch_size=4,
    )


def make_trainer(root: Path, max_steps: int, callbacks: list[L.Callback] | None = None, **kwargs: Any) -> L.Trainer:
    options = {
        "default_root_dir": str(root),
        "max_steps": max_steps,
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks or [],
    }
    options.update(kwargs)
    return L.Trainer(**options)
