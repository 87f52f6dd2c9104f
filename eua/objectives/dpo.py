"""Direct Preference Optimization for unlearning (Rafailov et al. 2023, arXiv:2305.18290).

    L = gamma * mean_i -(2/beta) * logsigmoid(beta * (r(y_w) - r(y_l))) + alpha * R
    r(y) = log p_theta(y|x) - log p_ref(y|x)   (summed over the answer tokens)

The forget answer is the rejected answer ``y_l`` and an alternative answer to the same forget
question is the preferred one ``y_w``. The ``2/beta`` scale follows open-unlearning and NPO.
IdkDPO takes the refusal answer as ``y_w``, as in the TOFU and NPO papers (Maini et al. 2024,
arXiv:2401.06121; Zhang et al. 2024, arXiv:2404.05868).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eua.objectives.base import Batch, ObjectiveOutput, sequence_nll
from eua.objectives.retain import ForgetRetainObjective, RetainLoss


class DPO(ForgetRetainObjective):
    """DPO with the forget answer rejected and ``batch[preferred]`` preferred, plus a retain term.

    Args:
        beta: inverse temperature of the preference loss (0.1).
        preferred: the batch part that holds the preferred answers to the forget questions. The
            paired TOFU DataModule provides ``refusal``, which makes this IdkDPO.
        gamma: weight of the DPO term.
        alpha: weight of the retain term.
        retain_loss: ``nll`` or ``kl``.
    """

    name = "dpo"
    forget_needs_reference = True

    def __init__(
        self,
        beta: float = 0.1,
        preferred: str = "refusal",
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: RetainLoss = "nll",
    ) -> None:
        super().__init__(gamma=gamma, alpha=alpha, retain_loss=retain_loss)
        self.beta = beta
        self.preferred = preferred

    def log_ratio(self, module, part: Batch) -> Tensor:
        """Return ``log p_theta(y|x) - log p_ref(y|x)`` per sequence ``[B]``."""
        policy_nll, _ = sequence_nll(module.logits(part), part["labels"])
        with torch.no_grad():
            reference_nll, _ = sequence_nll(module.reference_logits(part), part["labels"])
        return reference_nll - policy_nll

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        if self.preferred not in batch:
            raise KeyError(
                f"{self.name}: preferred={self.preferred!r} is not a part of the batch "
                f"(parts: {sorted(batch)}); set preferred to one of them"
            )
        chosen = self.log_ratio(module, batch[self.preferred])
        rejected = self.log_ratio(module, batch["forget"])

        dpo = (-2.0 / self.beta * F.logsigmoid(self.beta * (chosen - rejected))).mean()
        retain = self.retain_term(module, batch)
        loss = self.combine(dpo, retain)

        return ObjectiveOutput(
            loss,
            {
                "dpo_loss": dpo.detach(),
                "chosen_log_ratio": chosen.mean().detach(),
                "rejected_log_ratio": rejected.mean().detach(),
                f"retain_{self.retain_loss}": retain.detach(),
            },
        )


class IdkDPO(DPO):
    """DPO with the refusal answer preferred and the forget answer rejected, plus a retain term.

    Args:
        beta: inverse temperature of the preference loss (0.1).
        gamma: weight of the DPO term.
        alpha: weight of the retain term.
        retain_loss: ``nll`` or ``kl``.
    """

    name = "idkdpo"

    def __init__(
        self, beta: float = 0.1, gamma: float = 1.0, alpha: float = 1.0, retain_loss: RetainLoss = "nll"
    ) -> None:
        super().__init__(beta=beta, preferred="refusal", gamma=gamma, alpha=alpha, retain_loss=retain_loss)
