"""Query energy: how strongly the model believes it knows the answer to a question.

Greedy decoding from the prompt produces next-token distributions ``z_0, z_1, ...``: ``z_0`` sits
at the last prompt token and ``z_t`` produced generated token ``t + 1``. With the energy
``E(z) = -T * logsumexp(z / T)`` of :class:`eua.energy.EnergyHead`, a query's score is

- ``kind="prompt"``: ``E(z_0)``, one forward pass over the prompt;
- ``kind="generated"``: ``mean_{t < k} E(z_t)`` over the first ``k`` generated tokens, stopping
  after the end-of-turn token (the distribution that produced it still counts).

These are the positions the EUA loss trains, because its answer tokens start at ``z_0``. A higher
score means less knowledge, so the guard refuses scores above its threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eua.data.datasets import left_pad
from eua.data.formatting import encode_prompt, end_of_turn_id
from eua.energy import EnergyHead

ScoreKind = Literal["prompt", "generated"]


@dataclass(frozen=True)
class ScoreDefinition:
    """Which next-token distributions a query's energy averages over.

    Args:
        kind: ``prompt`` (the last prompt token) or ``generated`` (the first ``k`` greedy steps).
        k: number of generated tokens averaged by ``kind="generated"``.
        temperature: energy temperature ``T``.
    """

    kind: ScoreKind = "prompt"
    k: int = 8
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("prompt", "generated"):
            raise ValueError(f"score kind must be 'prompt' or 'generated', got {self.kind!r}")
        if self.k < 1:
            raise ValueError(f"score k must be at least 1, got {self.k}")
        if not self.temperature > 0:
            raise ValueError(f"score temperature must be positive, got {self.temperature}")

    @property
    def steps(self) -> int:
        """Generation steps the score needs."""
        return 1 if self.kind == "prompt" else self.k

    def describe(self) -> str:
        if self.kind == "prompt":
            return f"energy at the last prompt token (T={self.temperature})"
        return f"mean energy over the first {self.k} generated tokens (T={self.temperature})"


@dataclass
class Generation:
    """Greedy answers to a batch of prompts and the query energy of each prompt.

    ``step_energies`` ``[B, S]`` and ``step_mask`` ``[B, S]`` keep every step's energy, so other
    score definitions can be computed from the same generation (:func:`query_energy`).
    """

    answers: list[str]
    energies: Tensor
    step_energies: Tensor
    step_mask: Tensor


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Return the pad token, else ``eos``, for left-padding prompts."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return pad


def encode_questions(tokenizer: PreTrainedTokenizerBase, questions: Sequence[str]) -> dict[str, Tensor]:
    """Left-pad the prompts of ``questions`` into ``input_ids`` and ``attention_mask``."""
    return left_pad([encode_prompt(tokenizer, question) for question in questions], pad_token_id(tokenizer))


def step_mask(tokens: Tensor, stop_ids: Sequence[int]) -> Tensor:
    """Mark the generation steps up to and including each row's first stop token ``[B, S]``."""
    is_stop = torch.isin(tokens, torch.tensor(list(stop_ids), device=tokens.device))
    stops_before = is_stop.long().cumsum(dim=1) - is_stop.long()
    return stops_before == 0


def query_energy(step_energies: Tensor, mask: Tensor, definition: ScoreDefinition) -> Tensor:
    """Reduce per-step energies ``[B, S]`` with their valid-step mask to one score per query."""
    if definition.kind == "prompt":
        return step_energies[:, 0]
    energies = step_energies[:, : definition.k]
    weights = mask[:, : definition.k].to(energies.dtype)
    return (energies * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


@torch.no_grad()
def generate_with_energy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: dict[str, Tensor],
    definition: ScoreDefinition,
    max_new_tokens: int,
    energy_head: EnergyHead | None = None,
) -> Generation:
    """Decode left-padded prompts greedily and score each with ``definition``.

    One ``generate`` call returns both: it runs for ``max(max_new_tokens, definition.steps)``
    steps and keeps the raw logits of every step.
    """
    head = energy_head or EnergyHead(definition.temperature)
    if head.temperature != definition.temperature:
        raise ValueError(
            f"the energy head has temperature {head.temperature}, but the score definition uses "
            f"{definition.temperature}; score with the temperature the threshold was calibrated at"
        )
    stop_ids = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=prompt["input_ids"].to(device),
        attention_mask=prompt["attention_mask"].to(device),
        max_new_tokens=max(max_new_tokens, definition.steps),
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=pad_token_id(tokenizer),
        output_logits=True,
        return_dict_in_generate=True,
    )
    new_tokens = output.sequences[:, prompt["input_ids"].shape[1] :]
    step_energies = head(torch.stack(output.logits, dim=1))
    mask = step_mask(new_tokens, stop_ids)
    energies = query_energy(step_energies, mask, definition)

    answer_tokens = new_tokens[:, :max_new_tokens]
    answers = [text.strip() for text in tokenizer.batch_decode(answer_tokens, skip_special_tokens=True)]
    return Generation(
        answers=answers,
        energies=energies.float().cpu(),
        step_energies=step_energies.float().cpu(),
        step_mask=mask.cpu(),
    )


def score_questions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    definition: ScoreDefinition,
    batch_size: int = 32,
) -> Tensor:
    """Return the query energy of every question, float32 of shape ``[len(questions)]``."""
    scores = []
    for start in range(0, len(questions), batch_size):
        prompt = encode_questions(tokenizer, questions[start : start + batch_size])
        generation = generate_with_energy(model, tokenizer, prompt, definition, max_new_tokens=0)
        scores.append(generation.energies)
    return torch.cat(scores) if scores else torch.empty(0)
