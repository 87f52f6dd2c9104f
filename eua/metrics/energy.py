"""Energy separation scores as distributed torchmetrics: AUROC, AUPR and FPR at a fixed TPR.

Forget items are the positive class and their sequence energy is the score (an unlearned model
should give them high energy). The other class is the retain set or the holdout set. A sequence
energy is either the mean token energy over the answer or the energy at the last prompt token.
``eua.evaluation.scoring`` computes both with the module's ``EnergyHead``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from eua.metrics import functional as M
from eua.metrics.per_item import ItemMetric

Split = Literal["forget", "other"]


class _EnergySeparation(ItemMetric):
    groups = ("forget", "other")
    columns = ("energy",)

    def update(self, index: Tensor, energy: Tensor, split: Split) -> None:
        self._add(split, index, energy=energy)

    def _score(self, forget: Tensor, other: Tensor) -> float:
        raise NotImplementedError

    def compute(self) -> Tensor:
        gathered = self._gathered()
        return torch.tensor(self._score(gathered["forget"]["energy"], gathered["other"]["energy"]), dtype=torch.float64)


class EnergyAUROC(_EnergySeparation):
    """Area under the ROC curve of energy, forget items positive."""

    def _score(self, forget: Tensor, other: Tensor) -> float:
        return M.energy_auroc(forget, other)


class EnergyAUPR(_EnergySeparation):
    """Average precision of energy, forget items positive."""

    def _score(self, forget: Tensor, other: Tensor) -> float:
        return M.energy_aupr(forget, other)


class EnergyFPRAtTPR(_EnergySeparation):
    """False-positive rate on the other set at the threshold that flags ``tpr`` of the forget items."""

    def __init__(self, tpr: float = 0.95, **kwargs) -> None:
        if not 0 < tpr <= 1:
            raise ValueError(f"tpr must be in (0, 1], got {tpr}")
        super().__init__(**kwargs)
        self.tpr = tpr

    def _score(self, forget: Tensor, other: Tensor) -> float:
        return M.energy_fpr_at_tpr(forget, other, self.tpr)
