"""Energy-based Unlearning Alignment (Distinguishable Deletion; Yang et al., ICML 2026, arXiv:2605.16776).

    L = gamma * L_EUA + alpha * NLL(retain)
    L_EUA = mean_retain relu(E(z_t) - m_in,t)^2 + mean_forget relu(m_out,t - E(z_t))^2

over answer-token positions ``t``. The margins ``m_in`` and ``m_out`` are the energies of the top
and bottom ``fraction`` of the frozen reference model's logits at the same position (see
:mod:`eua.energy`).

Cost: each part goes through the policy once, and the retain NLL and the retain energies come from
one chunked pass over its answer positions (:func:`eua.energy.token_energy_and_nll`). The margins
come from the reference model at answer positions only, and :class:`MarginCache` keeps them, so a
row of the forget or retain set runs through the reference model once per fit.
"""

from __future__ import annotations

from functools import partial

import torch

from eua.energy import MarginFill, margin_size, chunk_positions, chunked_token_energy, energy_boundary_loss, token_energy_and_nll
from eua.objectives.base import Batch, Objective, ObjectiveOutput
from eua.objectives.margin_cache import MarginCache, answer_mask, answer_targets, compute_margins


class EUA(Objective):
    """Push forget-token energies above the reference's bottom-fraction margin, keep retain below the top one.

    Args:
        gamma: weight of the energy boundary loss.
        alpha: weight of the retain NLL.
        fraction: share of the vocabulary that forms each margin (top and bottom).
        temperature: energy temperature ``T`` (of the policy energies and of the margins).
        fill: ``zeros`` (unselected logits count as 0) or ``exclude`` (logsumexp over the selected ones).
        cache_margins: keep the reference margins of every row seen (on CPU), so later epochs skip
            the reference forward pass for it.
        chunk_size: token positions per chunk of energy and margin computations; unset picks
            ``2**24 // V`` (64 MiB of float32 per chunk).
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
        cache_margins: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"EUA temperature must be positive, got {temperature}")
        margin_size(fraction, 1 << 30, fill)
        chunk_positions(1, chunk_size)
        self.gamma = gamma
        self.alpha = alpha
        self.fraction = fraction
        self.temperature = temperature
        self.fill = fill
        self.cache_margins = cache_margins
        self.chunk_size = chunk_size
        self._cache = MarginCache() if cache_margins else None

    @property
    def margin_cache(self) -> MarginCache | None:
        return self._cache

    def margins(self, module, name: str, part: Batch, mask: torch.Tensor) -> torch.Tensor:
        """Return the reference ``(m_in, m_out)`` at the true positions of ``mask``: shape ``[N, 2]``."""
        with module.reference_context() as reference:
            compute = partial(
                compute_margins,
                reference,
                fraction=self.fraction,
                temperature=self.temperature,
                fill=self.fill,
                chunk_size=self.chunk_size,
            )
            if self._cache is None:
                return compute(part, mask)
            # NOTE: with LoRA the reference is the trained model's own base, so the cache binds to
            # its weights once; the base weights stay frozen, so its margins stay valid.
            if not self._cache.is_bound_to(reference):
                self._cache.bind_module(module, reference, self.fraction, self.temperature, self.fill)
            return self._cache.margins(name, part, mask, compute)

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        forget, retain = batch["forget"], batch["retain"]
        forget_mask = answer_mask(forget["labels"])
        retain_mask = answer_mask(retain["labels"])

        # The reference runs first, so its activations are freed before the policy's pile up.
        forget_margin = self.margins(module, "forget", forget, forget_mask)[:, 1]
        retain_margin = self.margins(module, "retain", retain, retain_mask)[:, 0]

        forget_energy = chunked_token_energy(module.logits(forget), forget_mask, self.temperature, self.chunk_size)
        retain_energy, retain_nll = token_energy_and_nll(
            module.logits(retain), retain_mask, answer_targets(retain["labels"]), self.temperature, self.chunk_size
        )

        everywhere = partial(torch.ones_like, dtype=torch.bool)
        boundary = energy_boundary_loss(
            forget_energy, retain_energy, forget_margin, retain_margin, everywhere(forget_energy), everywhere(retain_energy)
        )
        retain_loss = retain_nll.sum() / max(1, retain_nll.numel())
        loss = self.gamma * boundary + self.alpha * retain_loss

        return ObjectiveOutput(
            loss,
            {
                "energy_loss": boundary.detach(),
                "retain_nll": retain_loss.detach(),
                "forget_energy": forget_energy.detach().mean(),
                "retain_energy": retain_energy.detach().mean(),
            },
        )
