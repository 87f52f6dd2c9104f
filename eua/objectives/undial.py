"""UNDIAL: self-distillation with adjusted logits (Dong et al. 2024, arXiv:2402.10052).

    L = gamma * mean_t CE(softmax(z_ref,t - beta * onehot(y_t)), p_theta,t) + alpha * R

over the forget answer tokens ``t``: the student matches the frozen reference's distribution
with the logit of the true next token ``y_t`` lowered by ``beta``. The target never changes, so
the loss cannot diverge the way gradient ascent does. Unlike open-unlearning, which averages over
every position, the mean here runs over the answer tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eua.objectives.base import Batch, ObjectiveOutput, masked_mean, shift
from eua.objectives.retain import ForgetRetainObjective, RetainLoss


class UNDIAL(ForgetRetainObjective):
    """Distil the reference with the true token's logit lowered by ``beta`` on the forget answers.

    Args:
        beta: how far the true token's reference logit is lowered (10, as in open-unlearning).
        gamma: weight of the distillation term (1).
        alpha: weight of the retain term (0: the paper trains without a retain set).
        retain_loss: ``nll`` or ``kl``.
    """

    name = "undial"
    forget_needs_reference = True

    def __init__(
        self, beta: float = 10.0, gamma: float = 1.0, alpha: float = 0.0, retain_loss: RetainLoss = "nll"
    ) -> None:
        super().__init__(gamma=gamma, alpha=alpha, retain_loss=retain_loss)
        self.beta = beta

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        part = batch["forget"]
        logits, labels, mask = shift(module.logits(part), part["labels"])
        with torch.no_grad():
            reference, _, _ = shift(module.reference_logits(part), part["labels"])
            true_token = labels.masked_fill(~mask, 0).unsqueeze(-1)
            lowered = torch.full(true_token.shape, -self.beta, device=reference.device)
            adjusted = reference.float().scatter_add(-1, true_token, lowered)
            target = F.softmax(adjusted, dim=-1)

        cross_entropy = -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
        distill = masked_mean(cross_entropy, mask)
        retain = self.retain_term(module, batch)
        loss = self.combine(distill, retain)

        return ObjectiveOutput(loss, {"undial_loss": distill.detach(), f"retain_{self.retain_loss}": retain.detach()})
