"""Energy of next-token distributions, the reference margins and the EUA boundary loss.

For logits ``z`` over a vocabulary of size ``V`` at temperature ``T``:

    E(z) = -T * logsumexp(z / T)

Low energy means a confident model, so knowledge that is present. The margins come from a frozen
reference model's logits ``r``: keep the top ``k = floor(fraction * V)`` entries of ``r`` and put 0
everywhere else (``fill="zeros"``), and the energy of that vector is the retain margin ``m_in``.
The bottom ``k`` entries give the forget margin ``m_out`` the same way. With ``fill="exclude"`` the
logsumexp runs over the ``k`` selected entries only.

The boundary loss is a squared hinge on both sides (as in energy-based OOD training, Liu et al.
2020, arXiv:2010.03759):

    L_EUA = mean_retain relu(E(z_t) - m_in,t)^2 + mean_forget relu(m_out,t - E(z_t))^2

The released EUA code computes ``-logsumexp(z / T)`` without the factor ``T``; both agree at
``T = 1``. Every function here computes in float32, whatever the input dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

MarginFill = Literal["zeros", "exclude"]


def token_energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Compute ``-T * logsumexp(logits / T)`` over the last axis: shape ``[..., V]`` to ``[...]``."""
    _check_temperature(temperature)
    scaled = logits.float() / temperature
    return -temperature * torch.logsumexp(scaled, dim=-1)


def reference_margins(
    ref_logits: Tensor,
    fraction: float,
    temperature: float = 1.0,
    fill: MarginFill = "zeros",
) -> tuple[Tensor, Tensor]:
    """Compute the per-token ``(retain_margin, forget_margin)`` from reference logits ``[..., V]``.

    The retain margin is the energy of the top ``floor(fraction * V)`` reference logits and the
    forget margin that of the bottom ones. ``fill="zeros"`` keeps the other ``V - k`` positions in
    the logsumexp as zeros, and ``fill="exclude"`` drops them.
    """
    _check_temperature(temperature)
    vocab_size = ref_logits.shape[-1]
    k = math.floor(fraction * vocab_size)
    if not 0 < k <= vocab_size:
        raise ValueError(
            f"margin fraction {fraction} selects {k} of {vocab_size} logits; "
            f"choose a fraction in [1/V, 1] so that at least one logit is kept"
        )
    if fill not in ("zeros", "exclude"):
        raise ValueError(f"fill must be 'zeros' or 'exclude', got {fill!r}")

    ref = ref_logits.float()
    top = ref.topk(k, dim=-1).values
    bottom = ref.topk(k, dim=-1, largest=False).values

    return (
        _selected_energy(top, vocab_size, temperature, fill),
        _selected_energy(bottom, vocab_size, temperature, fill),
    )


def _selected_energy(selected: Tensor, vocab_size: int, temperature: float, fill: MarginFill) -> Tensor:
    if fill == "exclude" or selected.shape[-1] == vocab_size:
        return token_energy(selected, temperature)

    # The V - k zero entries each add exp(0 / T) = 1 inside the logsumexp.
    zero_count = torch.full_like(selected[..., :1], math.log(vocab_size - selected.shape[-1]))
    stacked = torch.cat([selected / temperature, zero_count], dim=-1)
    return -temperature * torch.logsumexp(stacked, dim=-1)


def energy_boundary_loss(
    forget_energy: Tensor,
    retain_energy: Tensor,
    forget_margin: Tensor,
    retain_margin: Tensor,
    forget_mask: Tensor,
    retain_mask: Tensor,
) -> Tensor:
    """Compute the squared-hinge EUA loss over the masked (answer) token positions.

    Each side is a mean over its own masked positions, and a side with no masked position
    contributes 0, so a batch with no forget answer token still gives a finite loss.
    """
    retain_hinge = torch.relu(retain_energy.float() - retain_margin.float()).pow(2)
    forget_hinge = torch.relu(forget_margin.float() - forget_energy.float()).pow(2)

    return _masked_mean(retain_hinge, retain_mask) + _masked_mean(forget_hinge, forget_mask)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


class EnergyHead(nn.Module):
    """Turns language-model logits into token energies at a fixed temperature.

    It has no weights: the same head scores answer tokens during training and queries for refusal
    at inference, so both use one definition of energy.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, logits: Tensor) -> Tensor:
        return token_energy(logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
