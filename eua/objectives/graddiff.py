"""Gradient difference: ascend the forget NLL, descend a retain term.

    L = -gamma * NLL(forget) + alpha * R,   R = NLL(retain) or KL(p_ref || p_theta) on retain

Liu, Lu et al., "Continual learning and private unlearning" (2022), arXiv:2203.12817; the TOFU
baseline (Maini et al. 2024, arXiv:2401.06121).
"""

from __future__ import annotations

from eua.objectives.base import Batch, ObjectiveOutput, forget_nll
from eua.objectives.retain import ForgetRetainObjective, RetainLoss


class GradDiff(ForgetRetainObjective):
    """``-gamma * NLL(forget) + alpha * R(retain)``, with ``R`` the retain NLL or the KL to the reference.

    Args:
        alpha: weight of the retain term.
        gamma: weight of the forget term.
        retain_loss: ``nll`` (default) or ``kl``; ``kl`` builds the frozen reference model.
    """

    name = "graddiff"

    def __init__(self, alpha: float = 1.0, gamma: float = 1.0, retain_loss: RetainLoss = "nll") -> None:
        super().__init__(gamma=gamma, alpha=alpha, retain_loss=retain_loss)

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        forget = forget_nll(module, batch)
        retain = self.retain_term(module, batch)
        loss = self.combine(-forget, retain)
        return ObjectiveOutput(loss, {"forget_nll": forget.detach(), f"retain_{self.retain_loss}": retain.detach()})
