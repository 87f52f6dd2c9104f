"""WGA: weighted gradient ascent, each token weighted by the model's own probability of it.

    L = -gamma * mean_t p_t^beta * NLL_t(forget) + alpha * R

over forget answer tokens ``t``, with ``p_t`` the policy's probability of the true token, held
constant in the gradient. Tokens the model has already forgotten stop contributing. Wang et al.,
"Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond" (ICLR 2025),
arXiv:2502.19301.
"""

from __future__ import annotations

import torch

from eua.objectives.retain import RetainLoss, TokenWeightedAscent


class WGA(TokenWeightedAscent):
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

    def token_weight(self, probability: torch.Tensor) -> torch.Tensor:
        return probability**self.beta
