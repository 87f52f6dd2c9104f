"""``RefusalGuard``: greedy generation that refuses queries whose energy is above a threshold.

For each question the guard decodes greedily, scores the query with the threshold's
:class:`~eua.refusal.scoring.ScoreDefinition` from the same ``generate`` call, and returns the
model's answer when ``energy <= threshold``, else a refusal. The refusal is ``template`` formatted
with the question, or a text from the ``idontknow`` set chosen by a CRC32 hash of the question
(the rule the EUA training data uses), so the same question always gets the same refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eua.data.datasets import refusal_rows
from eua.data.tofu import load_split, read_jsonl
from eua.energy import EnergyHead
from eua.refusal.calibration import Threshold
from eua.refusal.scoring import ScoreDefinition, encode_questions, generate_with_energy

DEFAULT_REFUSAL = "I'm not able to answer that."


@dataclass
class GuardOutput:
    """Guarded answers of a batch: the returned text, the refusal flag and the query energy."""

    answers: list[str]
    refused: Tensor
    energies: Tensor
    model_answers: list[str]
    # Per-step energies [B, S] and valid-step mask [B, S] of a single batch; None after __call__.
    steps: tuple[Tensor, Tensor] | None = None

    def records(self) -> list[dict[str, object]]:
        return [
            {"answer": answer, "refused": bool(refused), "energy": float(energy), "model_answer": model_answer}
            for answer, refused, energy, model_answer in zip(
                self.answers, self.refused.tolist(), self.energies.tolist(), self.model_answers
            )
        ]


@dataclass
class GuardSettings:
    """Refusal settings of ``eua predict``.

    Args:
        threshold: threshold file written by ``eua calibrate``; unset answers every query (no guard).
        refusals: ``idontknow`` (the TOFU split in the data folder) or a JSON Lines file of
            ``{"text": ...}`` rows.
        template: refusal text with an optional ``{question}`` field, used instead of ``refusals``.
    """

    threshold: str | None = None
    refusals: str = "idontknow"
    template: str | None = None


# Module hyperparameters store these settings, so checkpoints contain them; they hold only strings,
# so allowing them keeps checkpoints loadable with torch.load(weights_only=True).
torch.serialization.add_safe_globals([GuardSettings])


def load_refusals(source: str, data_dir: str | None = None) -> list[str]:
    """Read refusal texts: ``idontknow`` (the TOFU split in ``data_dir``) or a JSON Lines file of ``{"text": ...}``."""
    if source == "idontknow":
        rows = load_split("idontknow", data_dir)
    else:
        rows = read_jsonl(Path(source), split="idontknow")
    return [row["text"] for row in rows]


class RefusalGuard:
    """Wraps a causal LM's greedy generation with an energy threshold.

    Args:
        model: the language model (the one the threshold was calibrated on).
        tokenizer: its tokenizer.
        threshold: the fitted threshold; it is checked against the model's fingerprint here.
        refusals: refusal texts to choose from by question hash (for example ``idontknow``).
        template: a refusal template with an optional ``{question}`` field; it takes precedence
            over ``refusals``. With neither, every refusal is ``DEFAULT_REFUSAL``.
        max_new_tokens: maximum answer length in tokens.
        batch_size: questions per ``generate`` call in :meth:`__call__`.
        energy_head: the energy head to score with; its temperature must match the threshold's.
        verify: check the fingerprint (turn off only when the caller has just checked it).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        threshold: Threshold,
        refusals: Sequence[str] | None = None,
        template: str | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 32,
        energy_head: EnergyHead | None = None,
        verify: bool = True,
    ) -> None:
        if verify:
            threshold.verify(model, tokenizer)
        if refusals is not None and not refusals:
            raise ValueError("the refusal set is empty; pass at least one refusal text or a template")
        if template is not None:
            try:
                template.format(question="")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"invalid refusal template {template!r} ({error}); the only field is {{question}}") from error

        self.model = model
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.refusals = list(refusals) if refusals is not None else None
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.energy_head = energy_head or EnergyHead(threshold.score.temperature)

    def refusal_text(self, question: str) -> str:
        if self.template is not None:
            return self.template.format(question=question)
        if self.refusals is not None:
            return refusal_rows([{"question": question}], self.refusals)[0]["answer"]
        return DEFAULT_REFUSAL

    def decide(self, energies: Tensor) -> Tensor:
        """Return the refusal flags: ``energy > threshold``."""
        return energies > self.threshold.threshold

    @torch.no_grad()
    def generate_batch(self, questions: Sequence[str], prompt: dict[str, Tensor] | None = None) -> GuardOutput:
        """Answer one batch; ``prompt`` is its left-padded encoding when the caller already has it."""
        prompt = prompt if prompt is not None else encode_questions(self.tokenizer, questions)
        generation = generate_with_energy(
            self.model, self.tokenizer, prompt, self.threshold.score, self.max_new_tokens, self.energy_head
        )
        refused = self.decide(generation.energies)
        answers = [
            self.refusal_text(question) if is_refused else answer
            for question, answer, is_refused in zip(questions, generation.answers, refused.tolist())
        ]
        return GuardOutput(
            answers=answers,
            refused=refused,
            energies=generation.energies,
            model_answers=generation.answers,
            steps=(generation.step_energies, generation.step_mask),
        )

    def __call__(self, questions: Sequence[str]) -> GuardOutput:
        """Answer ``questions`` in batches of ``batch_size``."""
        outputs = [
            self.generate_batch(questions[start : start + self.batch_size])
            for start in range(0, len(questions), self.batch_size)
        ]
        if not outputs:
            return GuardOutput([], torch.empty(0, dtype=torch.bool), torch.empty(0), [])
        return GuardOutput(
            answers=[answer for output in outputs for answer in output.answers],
            refused=torch.cat([output.refused for output in outputs]),
            energies=torch.cat([output.energies for output in outputs]),
            model_answers=[answer for output in outputs for answer in output.model_answers],
        )


def build_guard(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: GuardSettings,
    energy_head: EnergyHead,
    max_new_tokens: int,
    data_dir: str | None,
) -> RefusalGuard | None:
    """Build the guard of ``settings`` (None when no threshold is set), checking the fingerprint."""
    if settings.threshold is None:
        return None
    threshold = Threshold.load(settings.threshold)
    threshold.verify(model, tokenizer, source=f"threshold file {settings.threshold}")
    if energy_head.temperature != threshold.score.temperature:
        raise ValueError(
            f"threshold file {settings.threshold} was calibrated at energy temperature "
            f"{threshold.score.temperature}, but the model's energy head uses {energy_head.temperature}; "
            f"set --model.energy_temperature {threshold.score.temperature}"
        )
    refusals = None if settings.template is not None else load_refusals(settings.refusals, data_dir)
    return RefusalGuard(
        model,
        tokenizer,
        threshold,
        refusals=refusals,
        template=settings.template,
        max_new_tokens=max_new_tokens,
        energy_head=energy_head,
        verify=False,
    )


def predict_records(
    guard: RefusalGuard | None,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    energy_head: EnergyHead,
    batch: dict[str, object],
    max_new_tokens: int,
) -> list[dict[str, object]]:
    """Answer one ``QuestionCollator`` batch: each input row plus ``answer``, ``refused``, ``energy``.

    Without a guard every answer is the model's own, ``refused`` is false and ``energy`` uses the
    default score definition at the energy head's temperature.
    """
    if guard is not None:
        output = guard.generate_batch(batch["questions"], batch["prompt"])
    else:
        definition = ScoreDefinition(temperature=energy_head.temperature)
        generation = generate_with_energy(model, tokenizer, batch["prompt"], definition, max_new_tokens, energy_head)
        refused = torch.zeros(len(generation.answers), dtype=torch.bool)
        output = GuardOutput(generation.answers, refused, generation.energies, generation.answers)

    return [{**row, **record} for row, record in zip(batch["rows"], output.records())]
