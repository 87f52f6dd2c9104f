"""Per-item scores of one evaluation batch: NLLs, generation ROUGE-L and energies.

One forward pass per sequence group (answer, correct answer, perturbed answers) gives every
probability and energy value; greedy generation, left-padded and with the KV cache, gives ROUGE-L.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eua.data.formatting import end_of_turn_id
from eua.energy import EnergyHead
from eua.metrics.functional import rouge_l_recall
from eua.objectives.base import sequence_nll, shift

SCORE_FIELDS = (
    "answer_nll",
    "correct_nll",
    "perturbed_nll",
    "perturbed_prob_sum",
    "rouge_l_recall",
    "energy_answer",
    "energy_prompt",
)


def _forward_logits(model: PreTrainedModel, part: dict[str, Tensor]) -> Tensor:
    return model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits


def _mean_nll(model: PreTrainedModel, part: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    logits = _forward_logits(model, part)
    total, length = sequence_nll(logits, part["labels"])
    return total / length.clamp_min(1), logits


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: dict[str, Tensor], max_new_tokens: int
) -> list[str]:
    """Greedy answers to left-padded prompts, cut at the end-of-turn token."""
    stop_ids = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    output = model.generate(
        input_ids=prompt["input_ids"],
        attention_mask=prompt["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, prompt["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@torch.no_grad()
def score_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    energy_head: EnergyHead,
    batch: dict[str, Any],
    max_new_tokens: int,
    generate: bool = True,
) -> dict[str, Tensor]:
    """Score one ``EvalCollator`` batch; every value is a float32 tensor of shape ``[B]``."""
    answer_nll, answer_logits = _mean_nll(model, batch["answer"])
    correct_nll, _ = _mean_nll(model, batch["correct"])

    # Energies of the answer tokens, and at the last prompt token (the first answer position).
    shifted_logits, _, mask = shift(answer_logits, batch["answer"]["labels"])
    energy = energy_head(shifted_logits)
    weights = mask.float()
    energy_answer = (energy * weights).sum(1) / weights.sum(1).clamp_min(1)
    first_answer = mask.float().argmax(dim=1)
    energy_prompt = energy.gather(1, first_answer[:, None]).squeeze(1)

    counts = batch["perturbed_count"]
    size = len(counts)
    perturbed_nll = torch.full((size,), float("nan"), device=answer_nll.device)
    perturbed_prob_sum = torch.full((size,), float("nan"), device=answer_nll.device)
    if "perturbed" in batch:
        flat_nll, _ = _mean_nll(model, batch["perturbed"])
        owner = torch.repeat_interleave(torch.arange(size, device=flat_nll.device), counts.to(flat_nll.device))
        counts_f = counts.to(flat_nll.device).float()
        has = counts_f > 0
        perturbed_nll[has] = (torch.zeros(size, device=flat_nll.device).index_add_(0, owner, flat_nll) / counts_f.clamp_min(1))[has]
        perturbed_prob_sum[has] = torch.zeros(size, device=flat_nll.device).index_add_(0, owner, torch.exp(-flat_nll))[has]

    if generate:
        generations = generate_answers(model, tokenizer, batch["prompt"], max_new_tokens)
        rouge = torch.tensor(rouge_l_recall(generations, batch["answer_text"]), dtype=torch.float32)
    else:
        rouge = torch.full((size,), float("nan"))

    scores = {
        "answer_nll": answer_nll,
        "correct_nll": correct_nll,
        "perturbed_nll": perturbed_nll,
        "perturbed_prob_sum": perturbed_prob_sum,
        "rouge_l_recall": rouge.to(answer_nll.device),
        "energy_answer": energy_answer,
        "energy_prompt": energy_prompt,
    }
    return {name: value.float() for name, value in scores.items()}
