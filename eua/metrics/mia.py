"""Membership-inference AUC (forget against holdout) and privleak as distributed torchmetrics.

Attack scores are "higher = less likely a training member": LOSS (mean answer NLL), ZLib (NLL
over the zlib length of the answer text), Min-K% and Min-K%++ (``eua.metrics.functional``).
The AUC uses holdout items as the positive class, as open-unlearning does, so 0.5 means the
forget items look like unseen data and values near 1 mean they still look memorised.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch import Tensor

from eua.metrics import functional as M
from eua.metrics.per_item import ItemMetric

log = logging.getLogger(__name__)

MIA_ATTACKS: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus")
Split = Literal["forget", "holdout"]


class MembershipInferenceAUC(ItemMetric):
    """AUC of one attack's per-item scores, forget items against holdout items."""

    groups = ("forget", "holdout")
    columns = ("score",)

    def __init__(self, attack: str = "loss", **kwargs) -> None:
        if attack not in MIA_ATTACKS:
            raise ValueError(f"unknown membership-inference attack {attack!r}; choose from {MIA_ATTACKS}")
        super().__init__(**kwargs)
        self.attack = attack

    def update(self, index: Tensor, scores: Tensor, split: Split) -> None:
        self._add(split, index, score=scores)

    def compute(self) -> Tensor:
        gathered = self._gathered()
        return torch.tensor(M.mia_auc(gathered["forget"]["score"], gathered["holdout"]["score"]), dtype=torch.float64)


class PrivLeak(MembershipInferenceAUC):
    """Privleak in percent: the model's attack AUC relative to the retain model's AUC.

    Without ``retain_auc`` the value is NaN (missing); open-unlearning falls back to 0.5 there.
    """

    def __init__(self, attack: str = "min_k", retain_auc: float | None = None, **kwargs) -> None:
        super().__init__(attack=attack, **kwargs)
        self.retain_auc = retain_auc

    def compute(self) -> Tensor:
        if self.retain_auc is None:
            log.warning(
                "privleak is missing: pass the retain model's results (--model.retain_results) to compare "
                "the membership-inference AUC against it"
            )
            return torch.tensor(math.nan, dtype=torch.float64)
        return torch.tensor(M.privleak(float(super().compute()), self.retain_auc), dtype=torch.float64)
