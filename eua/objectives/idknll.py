"""IdkNLL: teach a refusal to the forget questions by plain NLL.

    L = gamma * NLL(refusal answer | forget question) + alpha * R

The "IDK" baseline of TOFU (Maini et al. 2024, arXiv:2401.06121). The refusal answers are the
``idontknow`` strings that the paired DataModule puts in ``batch["refusal"]``.
"""

from __future__ import annotations

from eua.objectives.base import Batch, ObjectiveOutput, mean_nll
from eua.objectives.retain import ForgetRetainObjective, RetainLoss


class IdkNLL(ForgetRetainObjective):
    """NLL of the refusal answer given the forget question, plus a retain term.

    Args:
        gamma: weight of the refusal NLL.
        alpha: weight of the retain term.
        retain_loss: ``nll`` or ``kl``.
    """

    name = "idknll"

    def __init__(self, gamma: float = 1.0, alpha: float = 1.0, retain_loss: RetainLoss = "nll") -> None:
        super().__init__(gamma=gamma, alpha=alpha, retain_loss=retain_loss)

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        part = batch["refusal"]
        refusal = mean_nll(module.logits(part), part["labels"])
        retain = self.retain_term(module, batch)
        loss = self.combine(refusal, retain)
        return ObjectiveOutput(loss, {"refusal_nll": refusal.detach(), f"retain_{self.retain_loss}": retain.detach()})
