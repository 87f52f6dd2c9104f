"""WGA: weighted gradient ascent, each token weighted by the model's own probability of it.

    L = -gamma * mean_t p_t^beta * NLL_t(forget) + alpha * R

over forget answer tokens ``t``, with ``p_t`` the policy's probability of the true token, held
constant in the gradient. Tokens the model has already forgotten stop contributing. Wang et al.,
"Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond" (ICLR 2025),
arXiv:2502.19301.
"""

from __future__ import annotations

import torch

from eua.objectives.base import Batch, ObjectiveOutput, masked_mean, token_nll
from eua.objectives.retain import ForgetRetainObjective, RetainLoss


class WGA(ForgetRetainObjective):
    """Probability-weighted gradient ascent on the forget answers, plus a retain term.

    Args:
        beta: exponent of the token weight ``p^beta`` (1).
        gamma: weight of the forget term (1).
        alpha: weight of the retain term (1).
        retain_loss: ``nll`` or ``kl``.
    """

    name = "wga"

    def __init__(
        self, beta: float = 1.0, gamma: float = 1.0, alpha: float = 1.0, retain_loss: RetainLoss = "nll"
    ) -> None:
        super().__init__(gamma=gamma, alpha=alpha, retain_loss=retain_loss)
        self.beta = beta

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        part = batch["forget"]
        nll, mask = token_nll(module.logits(part), part["labels"])
        with torch.no_grad():
            weight = torch.exp(-nll) ** self.beta

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
