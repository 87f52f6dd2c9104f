"""The objective contract and the token-level helpers every objective shares.

An objective turns one training batch into a loss and its named terms. Unlearning objectives get
paired batches ``{"forget": part, "retain": part, "refusal": part}``, each part with
``input_ids``, ``attention_mask`` and ``labels`` (``-100`` outside the answer). The module gives
them the policy's logits (``module.logits(part)``), the frozen reference model's logits
(``module.reference_logits(part)``) and the energy head (``module.energy_head``).

Logits at position ``t`` predict token ``t + 1``, so every helper here shifts by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from eua.data.formatting import IGNORE_INDEX

if TYPE_CHECKING:
    from eua.module import UnlearningModule

Batch = dict[str, Any]


@dataclass
class ObjectiveOutput:
    """Total loss and the named terms the module logs as ``train/<name>``."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base class of training objectives.

    Subclasses set ``name`` and implement ``__call__``. Class attributes say what they need:
    ``paired`` (forget/retain/refusal batches rather than plain ones) and ``needs_reference``
    (a frozen copy of the starting model).
    """

    name: ClassVar[str] = ""
    paired: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False

    def __call__(self, module: UnlearningModule, batch: Batch) -> ObjectiveOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({args})"


def shift(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Align logits with the tokens they predict: ``(logits[:, :-1], labels[:, 1:], answer mask)``."""
    shifted_logits = logits[:, :-1]
    shifted_labels = labels[:, 1:]
    return shifted_logits, shifted_labels, shifted_labels != IGNORE_INDEX


def token_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token negative log-likelihood ``[B, L-1]`` in float32 (0 off the answer) and the answer mask."""
    shifted_logits, shifted_labels, mask = shift(logits, labels)
    nll = F.cross_entropy(
        shifted_logits.float().transpose(1, 2),
        shifted_labels.masked_fill(~mask, 0),
        reduction="none",
    )
    return nll * mask, mask


def mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean NLL over every answer token of the batch (the usual language-modelling loss)."""
    nll, mask = token_nll(logits, labels)
    return nll.sum() / mask.sum().clamp_min(1)


def sequence_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence summed NLL ``[B]`` and answer length ``[B]``."""
    nll, mask = token_nll(logits, labels)
    return nll.sum(dim=1), mask.sum(dim=1)


def retain_nll(module: UnlearningModule, batch: Batch) -> Tensor:
    return mean_nll(module.logits(batch["retain"]), batch["retain"]["labels"])


def forget_nll(module: UnlearningModule, batch: Batch) -> Tensor:
    return mean_nll(module.logits(batch["forget"]), batch["forget"]["labels"])


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def detached(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: value.detach() for name, value in terms.items()}


__all__ = [
    "Batch",
    "Objective",
    "ObjectiveOutput",
    "detached",
    "forget_nll",
    "masked_mean",
    "mean_nll",
    "retain_nll",
    "sequence_nll",
    "shift",
    "token_nll",
]
