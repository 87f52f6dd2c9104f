"""Fixtures of the reliability tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eua.models.loading import ModelSpec
from eua.module import UnlearningModule
from eua.objectives import Objective


@pytest.fixture()
def make_module(tiny_spec: ModelSpec, tmp_path: Path):
    def build(objective: Objective | None = None, learning_rate: float = 1e-3, **kwargs: Any) -> UnlearningModule:
        return UnlearningModule(
            lm=tiny_spec, objective=objective, learning_rate=learning_rate, max_new_tokens=4, **kwargs
        )

    return build
