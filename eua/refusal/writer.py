"""``JsonlPredictionWriter``: a Lightning callback that writes ``predict`` records to a JSON Lines file.

Each batch's records (one dict per question) are appended as they arrive, to ``<output>.partial``,
which is renamed to ``output`` when prediction ends, so an interrupted run leaves no partial
output under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class JsonlPredictionWriter(BasePredictionWriter):
    """Write each prediction record as one JSON line.

    Args:
        output: the JSON Lines file to write.
        overwrite: replace an existing file; otherwise an existing file is an error.
    """

    def __init__(self, output: str, overwrite: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.overwrite = overwrite
        self._stream: Any = None
        self._target: Path | None = None
        self._count = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = self.output
        # NOTE: with several processes each writes its own file, named <output>.rank<N>.
        if trainer.world_size > 1:
            target = target.with_name(f"{target.name}.rank{trainer.global_rank}")
        if target.exists() and not self.overwrite:
            raise FileExistsError(f"{target} already exists; set overwrite: true on the writer or choose another output")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target
        self._stream = open(target.with_name(target.name + ".partial"), "w", encoding="utf-8")
        self._count = 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: list[dict[str, Any]],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for record in prediction:
            self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._count += len(prediction)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stream.close()
        os.replace(self._stream.name, self._target)
        self._stream = None
        rank_zero_info(f"Wrote {self._count} predictions to {self._target}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
