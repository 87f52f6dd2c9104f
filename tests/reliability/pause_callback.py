"""A callback for the kill-and-resume test: write a marker and sleep at the start of one step."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class PauseAtStep(L.Callback):
    """Write ``marker`` and sleep for ``seconds`` when global step ``step`` is about to start."""

    def __init__(self, step: int, marker: str, seconds: float = 600.0) -> None:
        self.step = step
        self.marker = marker
        self.seconds = seconds

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(f"{trainer.global_step} {batch_idx}\n")
            time.sleep(self.seconds)
