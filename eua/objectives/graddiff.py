"""Gradient difference: ascend the forget NLL, descend the retain NLL.

    L = -NLL(forget) + alpha * NLL(retain)

Liu, Lu et al., "Continual learning and private unlearning" (2022), arXiv:2203.12817; the TOFU
baseline (Maini et al. 2024, arXiv:2401.06121).
"""

from __future__ import annotations

from eua.objectives.base import Batch, Objective, ObjectiveOutput, forget_nll, retain_nll


class GradDiff(Objective):
    """``-NLL(forget) + alpha * NLL(retain)``.

    Args:
        alpha: weight of the retain NLL.
    """

    name = "graddiff"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        forget = forget_nll(module, batch)
        retain = retain_nll(module, batch)
        loss = -forget + self.alpha * retain
        return ObjectiveOutput(loss, {"forget_nll": forget.detach(), "retain_nll": retain.detach()})
