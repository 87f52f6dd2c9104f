"""SatImp: gradient ascent with saturation and importance token weights.

    L = -gamma * mean_t p_t^beta1 * (1 - p_t)^beta2 * NLL_t(forget) + alpha * R

over forget answer tokens ``t``, with ``p_t`` the policy's probability of the true token, held
constant in the gradient. Yang et al., "Exploring Criteria of Loss Reweighting to Enhance LLM
Unlearning" (ICML 2025), arXiv:2505.11953.
"""

from __future__ import annotations

import torch

from eua.objectives.retain import RetainLoss, TokenWeightedAscent


class SatImp(TokenWeightedAscent):
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

    def token_weight(self, probability: torch.Tensor) -> torch.Tensor:
        return probability**self.beta1 * (1 - probability) ** self.beta2
