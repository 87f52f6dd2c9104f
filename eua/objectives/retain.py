"""The retain term that most unlearning methods add to their forget term.

    nll: mean NLL of the retain answers (keeps the model fitting the retain set)
    kl:  mean over retain answer tokens of KL(p_ref || p_theta) (keeps the model close to the
         frozen starting model on the retain set; needs the reference model)

``ForgetRetainObjective`` is the base class of methods shaped ``gamma * forget + alpha * retain``,
and ``TokenWeightedAscent`` that of the token-reweighted gradient-ascent methods (SatImp, WGA).
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from eua.objectives.base import Batch, Objective, ObjectiveOutput, masked_mean, mean_nll, shift, token_nll

RetainLoss = Literal["nll", "kl"]


def retain_kl(logits: Tensor, reference_logits: Tensor, labels: Tensor) -> Tensor:
    """Mean ``KL(p_ref || p_theta)`` over the answer tokens of ``labels``, in float32."""
    shifted_logits, _, mask = shift(logits, labels)
    shifted_reference, _, _ = shift(reference_logits, labels)
    log_p = F.log_softmax(shifted_logits.float(), dim=-1)
    log_q = F.log_softmax(shifted_reference.float(), dim=-1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=-1)
    return masked_mean(kl, mask)


class ForgetRetainObjective(Objective):
    """Base of methods whose loss is ``gamma * forget_term + alpha * retain_term``.

    Subclasses set ``forget_needs_reference`` when their forget term reads the reference model.
    ``needs_reference`` is then true for them, and for every method whose retain term is ``kl``.

    Args:
        gamma: weight of the forget term.
        alpha: weight of the retain term.
        retain_loss: ``nll`` (NLL of the retain answers) or ``kl`` (KL to the reference model on them).
    """

    forget_needs_reference: ClassVar[bool] = False

    def __init__(self, gamma: float = 1.0, alpha: float = 1.0, retain_loss: RetainLoss = "nll") -> None:
        if retain_loss not in get_args(RetainLoss):
            raise ValueError(f"invalid retain_loss {retain_loss!r}; choose one of {list(get_args(RetainLoss))}")
        self.gamma = gamma
        self.alpha = alpha
        self.retain_loss = retain_loss

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.forget_needs_reference or self.retain_loss == "kl"

    def retain_term(self, module, batch: Batch) -> Tensor:
        """Return the ``retain_loss`` term on ``batch["retain"]`` (0 without a forward pass when ``alpha`` is 0)."""
        part = batch["retain"]
        if self.alpha == 0:
            return torch.zeros((), device=part["input_ids"].device)

        logits = module.logits(part)
        if self.retain_loss == "nll":
            return mean_nll(logits, part["labels"])
        return retain_kl(logits, module.reference_logits(part), part["labels"])

    def combine(self, forget: Tensor, retain: Tensor) -> Tensor:
        return self.gamma * forget + self.alpha * retain


class TokenWeightedAscent(ForgetRetainObjective):
    """Gradient ascent on forget answer tokens, each weighted by a function of its probability.

    ``forget = -mean_t w(p_t) * NLL_t`` over forget answer tokens, with ``p_t`` the policy's
    probability of the true token and the weight ``w`` held constant in the gradient. Subclasses
    implement ``token_weight``.
    """

    def token_weight(self, probability: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        part = batch["forget"]
        nll, mask = token_nll(module.logits(part), part["labels"])
        with torch.no_grad():
            weight = self.token_weight(torch.exp(-nll))

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
