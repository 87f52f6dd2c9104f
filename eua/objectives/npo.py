"""Negative Preference Optimization (Zhang et al. 2024, arXiv:2404.05868).

    L = gamma * mean_i -(2/beta) * logsigmoid(-beta * (log p_theta(y_i|x_i) - log p_ref(y_i|x_i))) + alpha * R

over forget sequences ``(x_i, y_i)``, with summed answer log-probabilities. It is DPO with only
the rejected answer; as ``beta -> 0`` it becomes gradient ascent, and its gradient vanishes once
the policy assigns the forget answer much less probability than the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eua.objectives.base import Batch, ObjectiveOutput, sequence_nll
from eua.objectives.retain import ForgetRetainObjective, RetainLoss


class NPO(ForgetRetainObjective):
    """NPO on the forget sequences plus a retain term.

    Args:
        beta: inverse temperature of the preference loss (0.1, as in open-unlearning).
        gamma: weight of the NPO term.
        alpha: weight of the retain term.
        retain_loss: ``nll`` or ``kl``.
    """

    name = "npo"
    forget_needs_reference = True

    def __init__(
        self, beta: float = 0.1, gamma: float = 1.0, alpha: float = 1.0, retain_loss: RetainLoss = "nll"
    ) -> None:
        super().__init__(gamma=gamma, alpha=alpha, retain_loss=retain_loss)
        self.beta = beta

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        part = batch["forget"]
        forget_nll, _ = sequence_nll(module.logits(part), part["labels"])
        with torch.no_grad():
            reference_nll, _ = sequence_nll(module.reference_logits(part), part["labels"])

        # log p_theta - log p_ref = reference NLL - policy NLL
        log_ratio = reference_nll - forget_nll
        npo = (-2.0 / self.beta * F.logsigmoid(-self.beta * log_ratio)).mean()
        retain = self.retain_term(module, batch)
        loss = self.combine(npo, retain)

        return ObjectiveOutput(
            loss,
            {
                "npo_loss": npo.detach(),
                "forget_log_ratio": log_ratio.mean().detach(),
                f"retain_{self.retain_loss}": retain.detach(),
            },
        )
