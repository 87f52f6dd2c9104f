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

The chunked variants (``chunked_token_energy``, ``token_energy_and_nll``,
``chunked_reference_margins``) give the same numbers at selected token positions (the answer
tokens), but they read the logits a chunk of positions at a time, so no float32 copy larger than
``chunk_size x V`` is alive besides the logits themselves. Their backward pass recomputes each
chunk's softmax from the saved logits and per-token logsumexp values instead of saving copies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    k = margin_size(fraction, ref_logits.shape[-1], fill)
    return _margins_of(ref_logits.float(), k, temperature, fill)


def margin_size(fraction: float, vocab_size: int, fill: str) -> int:
    k = math.floor(fraction * vocab_size)
    if not 0 < k <= vocab_size:
        raise ValueError(
            f"margin fraction {fraction} selects {k} of {vocab_size} logits; "
            f"choose a fraction in [1/V, 1] so that at least one logit is kept"
        )
    if fill not in ("zeros", "exclude"):
        raise ValueError(f"fill must be 'zeros' or 'exclude', got {fill!r}")
    return k


def _margins_of(ref: Tensor, k: int, temperature: float, fill: MarginFill) -> tuple[Tensor, Tensor]:
    vocab_size = ref.shape[-1]
    # Unsorted selection is enough because logsumexp does not depend on the order.
    top = ref.topk(k, dim=-1, sorted=False).values
    bottom = ref.topk(k, dim=-1, largest=False, sorted=False).values

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


# ---------------------------------------------------------------------------------- chunked variants

# Default chunk: 2**24 float32 values (64 MiB) per chunk, so about 130 positions at V = 128256.
CHUNK_ELEMENTS = 1 << 24

Positions = tuple[Tensor, ...]


def chunk_positions(vocab_size: int, chunk_size: int | None = None) -> int:
    """Return how many token positions one chunk holds: ``chunk_size``, else ``2**24 // V``."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of token positions, got {chunk_size}")
    return chunk_size or max(1, CHUNK_ELEMENTS // vocab_size)


def _select(logits: Tensor, positions: Positions, start: int, stop: int) -> Tensor:
    return logits[tuple(index[start:stop] for index in positions)].float()


class _AnswerTokenStats(torch.autograd.Function):
    """Energies (and optionally NLLs) at selected positions, chunk by chunk, with a recomputing backward."""

    @staticmethod
    def forward(ctx, logits, positions, targets, temperature, chunk_size):
        count = positions[0].numel()
        lse_scaled = torch.empty(count, dtype=torch.float32, device=logits.device)
        lse_plain = torch.empty_like(lse_scaled) if targets is not None else None
        target_logit = torch.empty_like(lse_scaled) if targets is not None else None

        for start in range(0, count, chunk_size):
            stop = min(start + chunk_size, count)
            z = _select(logits, positions, start, stop)
            lse_scaled[start:stop] = torch.logsumexp(z / temperature, dim=-1)
            if targets is not None:
                lse_plain[start:stop] = lse_scaled[start:stop] if temperature == 1 else torch.logsumexp(z, dim=-1)
                target_logit[start:stop] = z.gather(-1, targets[start:stop, None]).squeeze(-1)

        ctx.save_for_backward(logits, *positions, lse_scaled, targets, lse_plain)
        ctx.position_dims = len(positions)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)

        energy = -temperature * lse_scaled
        if targets is None:
            nll = lse_scaled.new_empty(0)
            ctx.mark_non_differentiable(nll)
            return energy, nll
        return energy, lse_plain - target_logit

    @staticmethod
    def backward(ctx, grad_energy, grad_nll):
        logits, *saved = ctx.saved_tensors
        positions = tuple(saved[: ctx.position_dims])
        lse_scaled, targets, lse_plain = saved[ctx.position_dims :]
        temperature = ctx.temperature
        grad_logits = torch.zeros_like(logits)
        count = positions[0].numel()

        for start in range(0, count, ctx.chunk_size):
            stop = min(start + ctx.chunk_size, count)
            z = _select(logits, positions, start, stop)
            grad = torch.zeros_like(z)
            # dE/dz = -softmax(z / T), and dNLL/dz = softmax(z) - onehot(target).
            if grad_energy is not None:
                grad -= grad_energy[start:stop, None] * torch.exp(z / temperature - lse_scaled[start:stop, None])
            if grad_nll is not None and targets is not None:
                g = grad_nll[start:stop, None]
                grad += g * torch.exp(z - lse_plain[start:stop, None])
                grad.scatter_add_(-1, targets[start:stop, None], -g)
            grad_logits[tuple(index[start:stop] for index in positions)] = grad.to(grad_logits.dtype)

        return grad_logits, None, None, None, None


def _positions(logits: Tensor, mask: Tensor | None) -> Positions:
    if mask is None:
        mask = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if mask.shape != logits.shape[: mask.dim()] or mask.dim() != logits.dim() - 1:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match logits of shape {tuple(logits.shape)}")
    return mask.nonzero(as_tuple=True)


def chunked_token_energy(
    logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0, chunk_size: int | None = None
) -> Tensor:
    """Compute ``token_energy`` chunk by chunk, differentiably.

    With ``mask`` (shape ``logits.shape[:-1]``), return the energies at its true positions in
    row-major order, shape ``[N]``. Without it, return the energies of every position, shape
    ``logits.shape[:-1]``. To select shifted answer positions, pass the unshifted logits with a mask
    whose last column is false: indexing reads the selected rows only.
    """
    _check_temperature(temperature)
    positions = _positions(logits, mask)
    chunk = chunk_positions(logits.shape[-1], chunk_size)
    energy, _ = _AnswerTokenStats.apply(logits, positions, None, float(temperature), chunk)
    return energy if mask is not None else energy.reshape(logits.shape[:-1])


def token_energy_and_nll(
    logits: Tensor, mask: Tensor, targets: Tensor, temperature: float = 1.0, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Compute the energy and the next-token NLL at the true positions of ``mask`` in one pass.

    ``targets`` contains the token each selected position predicts, shape ``[N]``. Both outputs have
    shape ``[N]`` and are differentiable. At ``T = 1`` one logsumexp serves both, because
    ``NLL = -E - z_target``.
    """
    _check_temperature(temperature)
    positions = _positions(logits, mask)
    if targets.shape != positions[0].shape:
        raise ValueError(f"targets has shape {tuple(targets.shape)}, but the mask selects {positions[0].numel()} positions")
    chunk = chunk_positions(logits.shape[-1], chunk_size)
    return _AnswerTokenStats.apply(logits, positions, targets.long(), float(temperature), chunk)


def chunked_reference_margins(
    ref_logits: Tensor,
    mask: Tensor | None = None,
    fraction: float = 0.1,
    temperature: float = 1.0,
    fill: MarginFill = "zeros",
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Compute ``reference_margins`` at the true positions of ``mask`` (all positions when unset), chunk by chunk.

    The result has shape ``[N]`` with a mask and ``ref_logits.shape[:-1]`` without one.
    """
    positions = _positions(ref_logits, mask)
    chunk = chunk_positions(ref_logits.shape[-1], chunk_size)
    count = positions[0].numel()
    chunks = (_select(ref_logits, positions, start, min(start + chunk, count)) for start in range(0, count, chunk))
    retain, forget = margins_of_chunks(chunks, ref_logits.shape[-1], fraction, temperature, fill, ref_logits.device)
    if mask is None:
        return retain.reshape(ref_logits.shape[:-1]), forget.reshape(ref_logits.shape[:-1])
    return retain, forget


@torch.no_grad()
def margins_of_chunks(
    chunks: Iterable[Tensor],
    vocab_size: int,
    fraction: float,
    temperature: float = 1.0,
    fill: MarginFill = "zeros",
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Compute ``(retain_margin, forget_margin)`` of reference logits that arrive as ``[n, V]`` chunks.

    Returns two float32 tensors of shape ``[sum of n]``, without gradients. ``device`` places the
    empty result when no chunk arrives.
    """
    _check_temperature(temperature)
    k = margin_size(fraction, vocab_size, fill)
    retain, forget = [], []
    for chunk in chunks:
        if chunk.shape[-1] != vocab_size:
            raise ValueError(f"a chunk of reference logits has {chunk.shape[-1]} columns, expected V = {vocab_size}")
        top, bottom = _margins_of(chunk.float(), k, temperature, fill)
        retain.append(top)
        forget.append(bottom)
    if not retain:
        return torch.empty(0, device=device), torch.empty(0, device=device)
    return torch.cat(retain), torch.cat(forget)


class EnergyHead(nn.Module):
    """Turns language-model logits into token energies at a fixed temperature.

    It has no weights: the same head scores answer tokens during training and queries for refusal
    at inference, so both use one definition of energy. It computes ``chunk_size`` positions at a
    time (see ``chunked_token_energy``), so scoring a batch never copies all its logits to float32.
    """

    def __init__(self, temperature: float = 1.0, chunk_size: int | None = None) -> None:
        super().__init__()
        _check_temperature(temperature)
        chunk_positions(1, chunk_size)
        self.temperature = temperature
        self.chunk_size = chunk_size

    def forward(self, logits: Tensor, mask: Tensor | None = None) -> Tensor:
        """Return the energies of every position ``[...]``, or ``[N]`` at the true positions of ``mask``."""
        return chunked_token_energy(logits, mask, self.temperature, self.chunk_size)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, chunk_size={self.chunk_size}"
