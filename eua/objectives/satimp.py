"""SatImp: gradient ascent with saturation and importance token weights.

    L = -gamma * mean_t p_t^beta1 * (1 - p_t)^beta2 * NLL_t(forget) + alpha * R

over forget answer tokens ``t``, with ``p_t`` the policy's probability of the true token, held
constant in the gradient. Yang et al., "Exploring Criteria of Loss Reweighting to Enhance LLM
Unlearning" (ICML 2025), arXiv:2505.11953.
"""

from __future__ import annotations

import torch

from eua.objectives.base import Batch, ObjectiveOutput, masked_mean, token_nll
from eua.objectives.retain import ForgetRetainObjective, RetainLoss


class SatImp(ForgetRetainObjective):
    """Token-reweighted gradient ascent on the forget answers, plus a retain term.

    Args:
        beta1: exponent of the saturation weight ``p^beta1`` (5).
        beta2: exponent of the importance weight ``(1 - p)^beta2`` (1).
        gamma: weight of the forget term (1).
        alpha: weight of the retain term (0.1). Both follow the paper's setting as open-unlearning's
            method notes give it; its trainer YAML swaps them (gamma 0.1, alpha 1).
        retain_loss: ``nll`` or ``kl``.
    """

    name = "satimp"

    def __init__(
        self,
        beta1: float = 5.0,
        beta2: float = 1.0,
        gamma: float = 1.0,
        alpha: float = 0.1,
        retain_loss: RetainLoss = "nll",
    ) -> None:
        super().__init__(gamma=gamma, alpha=alpha, retain_loss=retain_loss)
        self.beta1 = beta1
        self.beta2 = beta2

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        part = batch["forget"]
        nll, mask = token_nll(module.logits(part), part["labels"])
        with torch.no_grad():
            probability = torch.exp(-nll)
            weight = probability**self.beta1 * (1 - probability) ** self.beta2

        forget = -masked_mean(weight * nll, mask)
        retain = self.retain_term(module, batch)
        loss = self.combine(forget, retain)

        return ObjectiveOutput(
            loss,
            {
                "forget_nll": masked_mean(nll, mask).detach(),
                "token_weight": masked_mean(weight, mask),
                f"retain_{self.retain_loss}": retain.detach(),
            },
        )
