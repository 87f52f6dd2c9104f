"""Supervised finetuning: the mean answer-token NLL of plain batches (makes target and retain models)."""

from __future__ import annotations

from eua.objectives.base import Batch, Objective, ObjectiveOutput, mean_nll


class SFT(Objective):
    """Minimise ``NLL(answer | question)`` on plain question-answer batches."""

    name = "sft"
    paired = False

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        loss = mean_nll(module.logits(batch), batch["labels"])
        return ObjectiveOutput(loss, {"nll": loss.detach()})
