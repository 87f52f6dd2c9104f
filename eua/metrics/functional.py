"""TOFU and energy metrics as pure functions of per-item values (arrays in, floats out).

Definitions follow TOFU (Maini et al. 2024, arXiv:2401.06121) as open-unlearning computes them:

- answer probability: ``exp(-mean token NLL)`` of the answer, per item;
- truth ratio: ``r = P(wrong) / P(correct)`` with ``P = exp(-mean token NLL)``, where the wrong
  NLL is first averaged over the perturbed answers; ``closer_to_1_better`` averages
  ``min(r, 1/r)`` (forget set), ``true_better`` averages ``max(0, 1 - r)`` (other sets);
- forget quality: the two-sample Kolmogorov-Smirnov p-value of the model's per-item forget truth
  ratios against the retain model's;
- model utility: the harmonic mean of the nine retain, real-authors and world-facts numbers;
- ROUGE-L recall of greedy generations against the answer (``rouge_score``, stemming on);
- energy AUROC: forget items are the positive class, scored by their energy (higher = forgotten).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy import stats
from torchmetrics.functional.classification import binary_auroc

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor
TruthRatioAggregator = Literal["closer_to_1_better", "true_better", "prob_mean"]


def _array(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def answer_probability(avg_nll: ArrayLike) -> np.ndarray:
    """Per-item ``exp(-mean token NLL)``."""
    return np.exp(-_array(avg_nll))


def truth_ratios(correct_avg_nll: ArrayLike, wrong_avg_nll: ArrayLike) -> np.ndarray:
    """Per-item ``P(wrong) / P(correct) = exp(correct_nll - wrong_nll)``; wrong is already averaged."""
    return np.exp(_array(correct_avg_nll) - _array(wrong_avg_nll))


def truth_ratio(
    correct_avg_nll: ArrayLike, wrong_avg_nll: ArrayLike, aggregator: TruthRatioAggregator
) -> float:
    """Aggregate truth ratio over items (see the module docstring for the aggregators)."""
    ratios = truth_ratios(correct_avg_nll, wrong_avg_nll)
    if aggregator == "closer_to_1_better":
        return float(np.mean(np.minimum(ratios, 1.0 / ratios)))
    if aggregator == "true_better":
        return float(np.mean(np.maximum(0.0, 1.0 - ratios)))
    if aggregator == "prob_mean":
        correct = np.exp(-_array(correct_avg_nll))
        wrong = np.exp(-_array(wrong_avg_nll))
        return float(np.mean(correct / (correct + wrong)))
    raise ValueError(f"unknown truth-ratio aggregator {aggregator!r}")


def forget_quality(truth_ratios_model: ArrayLike, truth_ratios_retain: ArrayLike) -> float:
    """KS-test p-value of per-item forget truth ratios, model against retain model."""
    return float(stats.ks_2samp(_array(truth_ratios_model), _array(truth_ratios_retain)).pvalue)


def normalized_probability(true_prob: ArrayLike, perturbed_prob_sum: ArrayLike) -> float:
    """Mean of ``p_true / (p_true + sum of p_perturbed)`` (real authors and world facts)."""
    true = _array(true_prob)
    return float(np.mean(true / (true + _array(perturbed_prob_sum))))


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean of the model-utility numbers; 0 if any of them is 0."""
    array = _array(values)
    if np.any(np.isnan(array)):
        return math.nan
    if np.any(array <= 0):
        return 0.0
    return float(stats.hmean(array))


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-item ROUGE-L recall of each generation against its reference answer."""
    return np.array([_ROUGE.score(ref, gen)["rougeL"].recall for gen, ref in zip(generations, references)])


def energy_auroc(forget_energy: ArrayLike, retain_energy: ArrayLike) -> float:
    """AUROC of energy as a score separating forget (positive) from retain items."""
    forget = torch.as_tensor(_array(forget_energy))
    retain = torch.as_tensor(_array(retain_energy))
    scores = torch.cat([forget, retain])
    target = torch.cat([torch.ones_like(forget), torch.zeros_like(retain)]).long()
    return float(binary_auroc(scores, target))
