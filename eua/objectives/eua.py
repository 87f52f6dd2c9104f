"""Energy-based Unlearning Alignment (Distinguishable Deletion; Yang et al., ICML 2026, arXiv:2605.16776).

    L = gamma * L_EUA + alpha * NLL(retain)
    L_EUA = mean_retain relu(E(z_t) - m_in,t)^2 + mean_forget relu(m_out,t - E(z_t))^2

over answer-token positions ``t``. The margins ``m_in`` and ``m_out`` are the energies of the top
and bottom ``fraction`` of the frozen reference model's logits at the same position (see
:mod:`eua.energy`). The retain NLL and the retain energies come from one forward pass.
"""

from __future__ import annotations

import torch

from eua.energy import MarginFill, energy_boundary_loss, reference_margins
from eua.objectives.base import Batch, Objective, ObjectiveOutput, mean_nll, shift


class EUA(Objective):
    """Push forget-token energies above the reference's bottom-fraction margin, keep retain below the top one.

    Args:
        gamma: weight of the energy boundary loss.
        alpha: weight of the retain NLL.
        fraction: share of the vocabulary that forms each margin (top and bottom).
        temperature: energy temperature ``T``.
        fill: ``zeros`` (unselected logits count as 0) or ``exclude`` (logsumexp over the selected ones).
    """

    name = "eua"
    needs_reference = True

    def __init__(
        self,
        gamma: float = 0.05,
        alpha: float = 1.0,
        fraction: float = 0.1,
        temperature: float = 1.0,
        fill: MarginFill = "zeros",
    ) -> None:
        self.gamma = gamma
        self.alpha = alpha
        self.fraction = fraction
        self.temperature = temperature
        self.fill = fill

    def answer_energies(self, module, part: Batch) -> tuple[torch.Tensor, ...]:
        """Return ``(logits, energy, retain_margin, forget_margin, mask)``, all but logits at answer positions."""
        logits = module.logits(part)
        shifted_logits, _, mask = shift(logits, part["labels"])
        energy = module.energy_head(shifted_logits)

        with torch.no_grad():
            ref_logits, _, _ = shift(module.reference_logits(part), part["labels"])
            retain_margin, forget_margin = reference_margins(ref_logits, self.fraction, self.temperature, self.fill)
        return logits, energy, retain_margin, forget_margin, mask

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        _, forget_energy, _, forget_margin, forget_mask = self.answer_energies(module, batch["forget"])
        retain_logits, retain_energy, retain_margin, _, retain_mask = self.answer_energies(module, batch["retain"])

        boundary = energy_boundary_loss(
            forget_energy, retain_energy, forget_margin, retain_margin, forget_mask, retain_mask
        )
        retain = mean_nll(retain_logits, batch["retain"]["labels"])
        loss = self.gamma * boundary + self.alpha * retain

        return ObjectiveOutput(
            loss,
            {
                "energy_loss": boundary.detach(),
                "retain_nll": retain.detach(),
                "forget_energy": forget_energy[forget_mask].mean().detach(),
                "retain_energy": retain_energy[retain_mask].mean().detach(),
            },
        )
