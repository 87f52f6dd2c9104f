"""Per-item scores of one evaluation batch: NLLs, memorization, attack scores, energies and ROUGE.

One forward pass over the answers gives the answer NLL, extraction strength, exact memorization,
the membership-inference scores and both sequence energies. One pass over the correct answers
(skipped when they are the answers themselves) and one over all perturbed answers give the truth
ratio inputs. Greedy generation, left-padded and with the KV cache, gives ROUGE.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eua.data.formatting import IGNORE_INDEX, end_of_turn_id
from eua.energy import EnergyHead
from eua.metrics import functional as M
from eua.objectives.base import sequence_nll, shift

log = logging.getLogger(__name__)

MIN_K_FRACTION = 0.4

SCORE_FIELDS = (
    "answer_nll",
    "correct_nll",
    "perturbed_nll",
    "perturbed_prob_mean",
    "perturbed_prob_sum",
    "rouge1_recall",
    "rouge_l_recall",
    "rouge_l_f1",
    "extraction_strength",
    "exact_memorization",
    "mia_loss",
    "mia_zlib",
    "mia_min_k",
    "mia_min_k_plus_plus",
    "energy_answer",
    "energy_prompt",
)


def _forward_logits(model: PreTrainedModel, part: dict[str, Tensor]) -> Tensor:
    return model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits


def _mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sequence mean NLL over the label span, NaN (with a warning) where the span is empty."""
    total, length = sequence_nll(logits, labels)
    empty = length == 0
    if bool(empty.any()):
        log.warning("%d sequence(s) have an empty answer span; their NLL-based values are missing", int(empty.sum()))
    return (total / length.clamp_min(1)).masked_fill(empty, math.nan)


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
        use_cache=True,
    )
    new_tokens = output[:, prompt["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _label_texts(tokenizer: PreTrainedTokenizerBase, labels: Tensor) -> list[str]:
    """Answer texts decoded from the label span, special tokens skipped (the ZLib attack's text)."""
    return [tokenizer.decode(row[row != IGNORE_INDEX].tolist(), skip_special_tokens=True) for row in labels]


def _perturbed_scores(model: PreTrainedModel, batch: dict[str, Any], size: int, device: torch.device) -> dict[str, Tensor]:
    """Per-item mean NLL, mean probability and summed probability of the perturbed answers."""
    missing = torch.full((size,), math.nan, device=device)
    result = {"perturbed_nll": missing, "perturbed_prob_mean": missing.clone(), "perturbed_prob_sum": missing.clone()}
    if "perturbed" not in batch:
        return result

    flat_nll = _mean_nll(_forward_logits(model, batch["perturbed"]), batch["perturbed"]["labels"])
    counts = batch["perturbed_count"].to(device)
    owner = torch.repeat_interleave(torch.arange(size, device=device), counts)
    has = counts > 0
    per_count = counts.double().clamp_min(1)

    def per_item(values: Tensor) -> Tensor:
        return torch.zeros(size, device=device, dtype=torch.float64).index_add_(0, owner, values.double())

    result["perturbed_nll"][has] = (per_item(flat_nll) / per_count)[has].float()
    result["perturbed_prob_mean"][has] = (per_item(torch.exp(-flat_nll)) / per_count)[has].float()
    result["perturbed_prob_sum"][has] = per_item(torch.exp(-flat_nll))[has].float()
    return result


@torch.no_grad()
def score_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    energy_head: EnergyHead,
    batch: dict[str, Any],
    max_new_tokens: int,
    generate: bool = True,
) -> dict[str, Tensor]:
    """Score one ``EvalCollator`` batch; every value is a float32 tensor of shape ``[B]``, NaN where missing."""
    answer = batch["answer"]
    answer_logits = _forward_logits(model, answer)
    answer_nll = _mean_nll(answer_logits, answer["labels"])
    device = answer_nll.device
    size = len(answer_nll)

    if torch.equal(batch["correct"]["input_ids"], answer["input_ids"]):
        correct_nll = answer_nll
    else:
        correct_nll = _mean_nll(_forward_logits(model, batch["correct"]), batch["correct"]["labels"])

    # Energies of the answer positions, and at the last prompt token (the first answer position).
    shifted_logits, _, mask = shift(answer_logits, answer["labels"])
    energy = energy_head(shifted_logits)
    weights = mask.float()
    length = weights.sum(1)
    energy_answer = ((energy * weights).sum(1) / length.clamp_min(1)).masked_fill(length == 0, math.nan)
    first_answer = mask.float().argmax(dim=1)
    energy_prompt = energy.gather(1, first_answer[:, None]).squeeze(1).masked_fill(length == 0, math.nan)

    texts = _label_texts(tokenizer, answer["labels"])
    scores: dict[str, Tensor] = {
        "answer_nll": answer_nll,
        "correct_nll": correct_nll,
        **_perturbed_scores(model, batch, size, device),
        "extraction_strength": M.extraction_strength_scores(answer_logits, answer["labels"]),
        "exact_memorization": M.exact_memorization_scores(answer_logits, answer["labels"]),
        "mia_loss": answer_nll,
        "mia_zlib": torch.as_tensor(M.zlib_scores(answer_nll, texts)),
        "mia_min_k": M.min_k_scores(answer_logits, answer["labels"], MIN_K_FRACTION),
        "mia_min_k_plus_plus": M.min_k_plus_plus_scores(answer_logits, answer["labels"], MIN_K_FRACTION),
        "energy_answer": energy_answer,
        "energy_prompt": energy_prompt,
    }

    if generate:
        generations = generate_answers(model, tokenizer, batch["prompt"], max_new_tokens)
        rouge = M.rouge_scores(generations, batch["answer_text"])
        scores["rouge1_recall"] = torch.as_tensor(rouge["rouge1_recall"])
        scores["rouge_l_recall"] = torch.as_tensor(rouge["rougeL_recall"])
        scores["rouge_l_f1"] = torch.as_tensor(rouge["rougeL_f1"])
    else:
        for name in ("rouge1_recall", "rouge_l_recall", "rouge_l_f1"):
            scores[name] = torch.full((size,), math.nan)

    return {name: scores[name].to(device).float() for name in SCORE_FIELDS}
