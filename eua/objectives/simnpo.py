"""SimNPO: reference-free, length-normalised NPO (Fan et al. 2024, "Simplicity Prevails", arXiv:2410.07163).

    L = gamma * mean_i -(2/beta) * logsigmoid(beta * (NLL(y_i|x_i) / |y_i| - delta)) + alpha * R

``NLL / |y|`` is the mean answer-token NLL of forget sequence ``i`` and ``delta`` a margin. The
paper calls the margin ``gamma`` and the retain weight ``lambda``. This class follows
open-unlearning's names: ``delta`` is the margin and ``gamma`` weights the forget term.
"""

from __future__ import annotations

import torch.nn.functional as F

from eua.objectives.base import Batch, ObjectiveOutput, sequence_nll
from eua.objectives.retain import ForgetRetainObjective, RetainLoss


class SimNPO(ForgetRetainObjective):
    """Length-normalised, reference-free NPO on the forget sequences plus a retain term.

    Args:
        beta: inverse temperature (4.5, the open-unlearning default for TOFU).
        delta: margin on the mean answer-token NLL (0).
        gamma: weight of the SimNPO term (0.125).
        alpha: weight of the retain term (1).
        retain_loss: ``nll`` or ``kl``.
    """

    name = "simnpo"

    def __init__(
        self,
        beta: float = 4.5,
        delta: float = 0.0,
        gamma: float = 0.125,
        alpha: float = 1.0,
        retain_loss: RetainLoss = "nll",
    ) -> None:
        super().__init__(gamma=gamma, alpha=alpha, retain_loss=retain_loss)
        self.beta = beta
        self.delta = delta

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        part = batch["forget"]
        total_nll, length = sequence_nll(module.logits(part), part["labels"])
        mean_nll = total_nll / length.clamp_min(1)

        simnpo = (-2.0 / self.beta * F.logsigmoid(self.beta * (mean_nll - self.delta))).mean()
        retain = self.retain_term(module, batch)
        loss = self.combine(simnpo, retain)

        return ObjectiveOutput(
            loss,
            {
                "simnpo_loss": simnpo.detach(),
                "forget_nll": mean_nll.mean().detach(),
                f"retain_{self.retain_loss}": retain.detach(),
            },
        )
