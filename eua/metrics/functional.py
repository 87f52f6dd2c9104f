"""TOFU, memorization, membership-inference and energy metrics as pure functions.

Aggregate functions take 1-D arrays or tensors of per-item values and return floats; a NaN item
is a missing value (an empty label span, for instance) and is dropped, as open-unlearning drops
``None`` items. Token-level functions (``*_scores``) take a batch of logits and labels and return
one value per item, NaN where the label span is empty. ``docs/metrics.md`` gives each definition
with its source; in short, with ``P = exp(-mean token NLL)``:

- answer probability: ``P`` of the answer; with several answers, the mean of their ``P``;
- truth ratio per item: ``r = P(wrong) / P(correct)``, the wrong NLL averaged over the perturbed
  answers before exponentiating; aggregators ``closer_to_1_better`` (mean ``min(r, 1/r)``),
  ``true_better`` (mean ``max(0, 1 - r)``) and ``prob_mean`` (mean ``1 / (1 + r)``);
- forget quality: KS-test p-value of the model's per-item forget truth ratios against the retain
  model's; model utility: harmonic mean of nine numbers;
- extraction strength and exact memorization: teacher-forced argmax against the labels, without
  the final (end-of-turn) label token;
- membership inference: per-item attack scores (higher = more likely a non-member), AUC of forget
  (label 0) against holdout (label 1), and privleak relative to the retain model's AUC;
- energy: forget items are the positive class, scored by their energy (higher = forgotten).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from scipy import stats
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_specificity_at_sensitivity,
)

from eua.data.formatting import IGNORE_INDEX

log = logging.getLogger(__name__)

ArrayLike = Sequence[float] | np.ndarray | Tensor
TruthRatioAggregator = Literal["closer_to_1_better", "true_better", "prob_mean"]
TRUTH_RATIO_AGGREGATORS: tuple[str, ...] = ("closer_to_1_better", "true_better", "prob_mean")


def _array(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _finite(values: ArrayLike) -> np.ndarray:
    array = _array(values).reshape(-1)
    return array[np.isfinite(array)]


def nanmean(values: ArrayLike) -> float:
    """Mean over the items that are not missing; NaN when every item is missing."""
    finite = _finite(values)
    return float(finite.mean()) if finite.size else math.nan


# ------------------------------------------------------------------------------ probability


def answer_probability(avg_nll: ArrayLike) -> np.ndarray:
    """Per-item ``exp(-mean token NLL)``; a 2-D ``[items, answers]`` input gives the mean over answers.

    The 2-D case follows open-unlearning's ``probability`` metric on the perturbed answers, which
    averages the probabilities (not the NLLs) of the answers of an item.
    """
    probability = np.exp(-_array(avg_nll))
    if probability.ndim == 2:
        return probability.mean(axis=1)
    return probability


def truth_ratios(correct_avg_nll: ArrayLike, wrong_avg_nll: ArrayLike) -> np.ndarray:
    """Per-item ``P(wrong) / P(correct) = exp(correct_nll - wrong_nll)``.

    ``wrong_avg_nll`` is either per item (already averaged over the perturbed answers) or
    ``[items, answers]``, in which case the NLLs are averaged first, as open-unlearning does.
    """
    wrong = _array(wrong_avg_nll)
    if wrong.ndim == 2:
        wrong = wrong.mean(axis=1)
    return np.exp(_array(correct_avg_nll) - wrong)


def aggregate_truth_ratios(ratios: ArrayLike, aggregator: TruthRatioAggregator) -> float:
    """Aggregate per-item truth ratios ``r = P(wrong) / P(correct)``, dropping missing items."""
    r = _finite(ratios)
    if aggregator not in TRUTH_RATIO_AGGREGATORS:
        raise ValueError(f"unknown truth-ratio aggregator {aggregator!r}; choose from {TRUTH_RATIO_AGGREGATORS}")
    if r.size == 0:
        return math.nan
    if aggregator == "closer_to_1_better":
        return float(np.mean(np.minimum(r, 1.0 / r)))
    if aggregator == "true_better":
        return float(np.mean(np.maximum(0.0, 1.0 - r)))
    # prob_mean: P(correct) / (P(correct) + P(wrong)) = 1 / (1 + r).
    return float(np.mean(1.0 / (1.0 + r)))


def truth_ratio(correct_avg_nll: ArrayLike, wrong_avg_nll: ArrayLike, aggregator: TruthRatioAggregator) -> float:
    """Aggregate truth ratio over items (see ``aggregate_truth_ratios`` for the aggregators)."""
    return aggregate_truth_ratios(truth_ratios(correct_avg_nll, wrong_avg_nll), aggregator)


def forget_quality(truth_ratios_model: ArrayLike, truth_ratios_retain: ArrayLike) -> float:
    """Two-sample KS-test p-value of per-item forget truth ratios, model against retain model.

    The p-value depends only on the order of the values, so it is the same for ``r``, ``1 / r``
    and ``1 / (1 + r)``, provided both samples use the same one.
    """
    model = _finite(truth_ratios_model)
    retain = _finite(truth_ratios_retain)
    if model.size == 0 or retain.size == 0:
        return math.nan
    return float(stats.ks_2samp(model, retain).pvalue)


def normalized_probabilities(true_prob: ArrayLike, perturbed_prob_sum: ArrayLike) -> np.ndarray:
    """Per-item ``p_true / (p_true + sum of p_perturbed)`` (real authors and world facts)."""
    true = _array(true_prob)
    return true / (true + _array(perturbed_prob_sum))


def normalized_probability(true_prob: ArrayLike, perturbed_prob_sum: ArrayLike) -> float:
    """Mean normalised probability over the items that are not missing."""
    return nanmean(normalized_probabilities(true_prob, perturbed_prob_sum))


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean (``scipy.stats.hmean``) of the nine model-utility numbers.

    Missing if any number is missing; 0 if any is 0, the limit of the harmonic mean.
    """
    array = _array(values)
    if array.size == 0 or np.any(~np.isfinite(array)):
        return math.nan
    if np.any(array <= 0):
        return 0.0
    return float(stats.hmean(array))


# ------------------------------------------------------------------------------ generation

_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_scores(generations: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-item ``rouge1_recall``, ``rougeL_recall`` and ``rougeL_f1`` of generations against references."""
    if len(generations) != len(references):
        raise ValueError(f"got {len(generations)} generations for {len(references)} references")
    scores = [_ROUGE.score(reference, generation) for generation, reference in zip(generations, references)]
    return {
        "rouge1_recall": np.array([score["rouge1"].recall for score in scores]),
        "rougeL_recall": np.array([score["rougeL"].recall for score in scores]),
        "rougeL_f1": np.array([score["rougeL"].fmeasure for score in scores]),
    }


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-item ROUGE-L recall (``rouge_score``, stemming on) of each generation against its reference."""
    return rouge_scores(generations, references)["rougeL_recall"]


# ------------------------------------------------------------------------------ token level


def _memorization_span(labels: Tensor) -> Tensor:
    """Mask ``[B, L-1]`` of the shifted label positions without each row's last label token.

    Open-unlearning leaves out the last label token (the end-of-turn token) from extraction
    strength, exact memorization and Min-K%; rows whose span becomes empty are all False.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    counts = mask.sum(dim=1, keepdim=True)
    rank = mask.long().cumsum(dim=1)
    return mask & (rank < counts)


def _warn_empty(name: str, empty: Tensor) -> None:
    count = int(empty.sum())
    if count:
        log.warning(
            "%s is missing for %d item(s): the label span has no token left once the final "
            "end-of-turn token is dropped; raise max_length if answers were cut",
            name,
            count,
        )


def exact_memorization_scores(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-item share of answer tokens the model predicts exactly (teacher forcing, greedy argmax)."""
    span = _memorization_span(labels)
    hits = (logits[:, :-1].argmax(dim=-1) == labels[:, 1:]) & span
    length = span.sum(dim=1)
    scores = hits.sum(dim=1).double() / length.clamp_min(1)
    empty = length == 0
    _warn_empty("exact memorization", empty)
    return scores.masked_fill(empty, math.nan)


def extraction_strength_scores(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-item ``1 - k / N``, with ``k`` the shortest prefix after which every prediction matches.

    ``N`` is the span length. When even the last token is wrong, ``k = N`` and the score is 0;
    open-unlearning's loop stops at ``k = N - 1`` there and reports ``1 / N``.
    """
    span = _memorization_span(labels)
    correct = logits[:, :-1].argmax(dim=-1) == labels[:, 1:]
    scores = torch.full((len(labels),), math.nan, dtype=torch.float64)
    for row in range(len(labels)):
        matches = correct[row][span[row]].cpu()
        n = len(matches)
        if n == 0:
            continue
        # A suffix from k matches when no mismatch lies at or after k: k = last mismatch + 1.
        mismatches = torch.nonzero(~matches).flatten()
        k = int(mismatches[-1]) + 1 if len(mismatches) else 0
        scores[row] = 1.0 - k / n
    _warn_empty("extraction strength", span.sum(dim=1) == 0)
    return scores


def _bottom_k_mean(values: Tensor, mask: Tensor, k: float) -> Tensor:
    """Per-row mean of the ``max(1, floor(k * n))`` smallest masked values; NaN for empty rows."""
    counts = mask.sum(dim=1)
    take = (counts.double() * k).floor().long().clamp_min(1)
    ordered = values.double().masked_fill(~mask, math.inf).sort(dim=1).values
    keep = torch.arange(values.shape[1], device=values.device)[None, :] < take[:, None]
    means = (ordered.masked_fill(~keep, 0.0)).sum(dim=1) / take
    return means.masked_fill(counts == 0, math.nan)


def min_k_scores(logits: Tensor, labels: Tensor, k: float = 0.4) -> Tensor:
    """Min-K% Prob (Shi et al. 2024): minus the mean of the lowest ``k`` share of token log-probabilities."""
    span = _memorization_span(labels)
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:].masked_fill(labels[:, 1:] == IGNORE_INDEX, 0)
    token = log_probs.gather(-1, targets[..., None]).squeeze(-1)
    _warn_empty("Min-K%", span.sum(dim=1) == 0)
    return -_bottom_k_mean(token, span, k)


def min_k_plus_plus_scores(logits: Tensor, labels: Tensor, k: float = 0.4) -> Tensor:
    """Min-K%++ (Zhang et al. 2025): Min-K% of ``(log p(x_t) - mu_t) / sigma_t``.

    ``mu_t`` and ``sigma_t^2`` are the mean and variance of ``log p`` under the model's own
    next-token distribution; the variance is clamped at 1e-6 as in open-unlearning.
    """
    span = _memorization_span(labels)
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = ((probs * log_probs.square()).sum(-1) - mu.square()).clamp_min(1e-6)
    targets = labels[:, 1:].masked_fill(labels[:, 1:] == IGNORE_INDEX, 0)
    token = log_probs.gather(-1, targets[..., None]).squeeze(-1)
    _warn_empty("Min-K%++", span.sum(dim=1) == 0)
    return -_bottom_k_mean((token - mu) / sigma.sqrt(), span, k)


def zlib_scores(avg_nll: ArrayLike, texts: Sequence[str]) -> np.ndarray:
    """ZLib attack (Carlini et al. 2021): mean NLL divided by the zlib-compressed byte length of the text."""
    lengths = np.array([len(zlib.compress(text.encode("utf-8"))) for text in texts], dtype=np.float64)
    return _array(avg_nll) / lengths


# ------------------------------------------------------------------------------ two-sample scores


def _binary(positive: ArrayLike, negative: ArrayLike) -> tuple[Tensor, Tensor] | None:
    pos = torch.as_tensor(_finite(positive))
    neg = torch.as_tensor(_finite(negative))
    if len(pos) == 0 or len(neg) == 0:
        return None
    scores = torch.cat([pos, neg])
    target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).long()
    return scores, target


def mia_auc(forget_scores: ArrayLike, holdout_scores: ArrayLike) -> float:
    """ROC AUC of attack scores with holdout items as the positive class.

    Scores are "higher = less likely a member" (a loss), so an AUC near 1 means the forget items
    still look like training data, and 0.5 means they look like unseen data.
    """
    pair = _binary(holdout_scores, forget_scores)
    return math.nan if pair is None else float(binary_auroc(*pair))


def privleak(auc: float, retain_auc: float) -> float:
    """MUSE privleak in percent: ``((1 - auc) - (1 - retain_auc)) / (1 - retain_auc) * 100``.

    Open-unlearning adds 1e-10 to the denominator; here a retain AUC of exactly 1 gives NaN.
    """
    if not (math.isfinite(auc) and math.isfinite(retain_auc)) or retain_auc == 1.0:
        return math.nan
    return ((1.0 - auc) - (1.0 - retain_auc)) / (1.0 - retain_auc) * 100.0


def energy_auroc(forget_energy: ArrayLike, other_energy: ArrayLike) -> float:
    """AUROC of energy as a score separating forget items (positive) from the others."""
    pair = _binary(forget_energy, other_energy)
    return math.nan if pair is None else float(binary_auroc(*pair))


def energy_aupr(forget_energy: ArrayLike, other_energy: ArrayLike) -> float:
    """Average precision (area under the precision-recall curve), forget items positive."""
    pair = _binary(forget_energy, other_energy)
    return math.nan if pair is None else float(binary_average_precision(*pair))


def energy_fpr_at_tpr(forget_energy: ArrayLike, other_energy: ArrayLike, tpr: float = 0.95) -> float:
    """Share of other items flagged at the lowest threshold that flags ``tpr`` of the forget items."""
    pair = _binary(forget_energy, other_energy)
    if pair is None:
        return math.nan
    specificity, _ = binary_specificity_at_sensitivity(*pair, min_sensitivity=tpr)
    return float(1.0 - specificity)
