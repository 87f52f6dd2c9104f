"""Helpers for the scaling tests: a very small TOFU data module and a quiet CPU trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest

from eua.data.datamodule import TOFUDataModule


def small_data(tofu_dir: Path, **overrides: Any) -> TOFUDataModule:
    """forget01 against one retain author, five rows per evaluation set (an odd count on purpose)."""
    settings: dict[str, Any] = dict(
        data_dir=str(tofu_dir),
        forget_split="forget01",
        retain_authors=1,
        mode="unlearn",
        eval_limit=5,
        max_length=128,
        batch_size=4,
        eval_batch_size=2,
    )
    settings.update(overrides)
    return TOFUDataModule(**settings)


def cpu_trainer(root: Path, **overrides: Any) -> L.Trainer:
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    settings.update(overrides)
    return L.Trainer(**settings)


@pytest.fixture()
def make_data(tofu_dir: Path):
    return lambda **overrides: small_data(tofu_dir, **overrides)
