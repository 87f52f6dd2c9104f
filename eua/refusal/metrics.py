"""Refusal metrics as torchmetrics, so they accumulate over batches and sync across processes.

- ``RefusalRate``: the share of queries the guard refused. On forget queries it is the refusal
  rate (higher is better), on retained, real-authors, world-facts or holdout queries it is the
  false-refusal rate (lower is better).
- ``GuardedRougeL``: ROUGE-L recall of the guarded answers against the reference answers, where a
  refused query counts with its refusal text (the TOFU generation metric of the guarded model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.aggregation import MeanMetric

from eua.metrics.functional import rouge_l_recall


class RefusalRate(MeanMetric):
    """Share of refused queries: ``update(refused)`` with a boolean tensor of flags."""

    def update(self, refused: Tensor) -> None:  # type: ignore[override]
        super().update(torch.as_tensor(refused).float())


class GuardedRougeL(MeanMetric):
    """Mean ROUGE-L recall of guarded answers (a refusal counts as its text) against references."""

    def update(self, answers: Sequence[str], references: Sequence[str]) -> None:  # type: ignore[override]
        if len(answers) != len(references):
            raise ValueError(f"got {len(answers)} answers for {len(references)} references")
        if answers:
            super().update(torch.as_tensor(rouge_l_recall(answers, references), dtype=torch.float32))
