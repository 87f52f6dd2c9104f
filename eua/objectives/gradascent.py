"""Gradient ascent on the forget set, with no retain term.

    L = -NLL(forget)

Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models" (2022),
arXiv:2210.01504; a TOFU baseline (Maini et al. 2024, arXiv:2401.06121).
"""

from __future__ import annotations

from eua.objectives.base import Batch, Objective, ObjectiveOutput, forget_nll


class GradAscent(Objective):
    """``-NLL(forget)``: maximise the NLL of the forget answers, with no term that protects the retain set."""

    name = "gradascent"

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        forget = forget_nll(module, batch)
        return ObjectiveOutput(-forget, {"forget_nll": forget.detach()})
