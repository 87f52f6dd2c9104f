"""TOFU metrics as ``torchmetrics.Metric`` classes whose state syncs across processes.

Each ``update`` takes the dataset indices of a batch with its per-item values; ``compute``
gathers every process's items, keeps each index once (distributed samplers repeat items to even
out the last batch) and applies the matching function of ``eua.metrics.functional``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from eua.metrics import functional as M
from eua.metrics.per_item import ItemMetric

log = logging.getLogger(__name__)

FORGET_QUALITY_MISSING = (
    "forget quality is missing because no retain-model results were given: evaluate a model "
    "finetuned on the retain split only (`eua test ... --model.results_path RETAIN.json`) and pass "
    "that file, or an open-unlearning TOFU_EVAL.json of the retain model, as --model.retain_results"
)


class ItemMean(ItemMetric):
    """Mean of a per-item value over the items that are not missing (NaN)."""

    def update(self, index: Tensor, values: Tensor) -> None:
        self._add("items", index, value=values)

    def compute(self) -> Tensor:
        return torch.tensor(M.nanmean(self._gathered()["items"]["value"]), dtype=torch.float64)


class AnswerProbability(ItemMetric):
    """Mean of ``exp(-mean token NLL)`` of the answer over items."""

    columns = ("avg_nll",)

    def update(self, index: Tensor, avg_nll: Tensor) -> None:
        self._add("items", index, avg_nll=avg_nll)

    def compute(self) -> Tensor:
        nll = self._gathered()["items"]["avg_nll"]
        return torch.tensor(M.nanmean(M.answer_probability(nll)), dtype=torch.float64)


class TruthRatio(ItemMetric):
    """Aggregate truth ratio ``P(wrong) / P(correct)`` (``aggregator`` as in ``aggregate_truth_ratios``)."""

    columns = ("correct_nll", "wrong_nll")

    def __init__(self, aggregator: M.TruthRatioAggregator, **kwargs) -> None:
        if aggregator not in M.TRUTH_RATIO_AGGREGATORS:
            raise ValueError(f"unknown truth-ratio aggregator {aggregator!r}; choose from {M.TRUTH_RATIO_AGGREGATORS}")
        super().__init__(**kwargs)
        self.aggregator = aggregator

    def update(self, index: Tensor, correct_nll: Tensor, wrong_nll: Tensor) -> None:
        """``wrong_nll`` is the per-item mean NLL of the perturbed answers."""
        self._add("items", index, correct_nll=correct_nll, wrong_nll=wrong_nll)

    def per_item(self) -> Tensor:
        items = self._gathered()["items"]
        return torch.as_tensor(M.truth_ratios(items["correct_nll"], items["wrong_nll"]))

    def compute(self) -> Tensor:
        return torch.tensor(M.aggregate_truth_ratios(self.per_item(), self.aggregator), dtype=torch.float64)


class ForgetQuality(TruthRatio):
    """KS-test p-value of the per-item forget truth ratios against the retain model's.

    Without ``retain_truth_ratios`` the value is NaN (missing) and a warning says how to get them.
    """

    def __init__(self, retain_truth_ratios: Sequence[float] | None = None, **kwargs) -> None:
        super().__init__(aggregator="closer_to_1_better", **kwargs)
        self.retain_truth_ratios = None if retain_truth_ratios is None else list(retain_truth_ratios)

    def compute(self) -> Tensor:
        if self.retain_truth_ratios is None:
            log.warning(FORGET_QUALITY_MISSING)
            return torch.tensor(math.nan, dtype=torch.float64)
        return torch.tensor(M.forget_quality(self.per_item(), self.retain_truth_ratios), dtype=torch.float64)


class NormalizedProbability(ItemMetric):
    """Mean of ``p_true / (p_true + sum of p_perturbed)`` (real authors, world facts)."""

    columns = ("answer_nll", "perturbed_prob_sum")

    def update(self, index: Tensor, answer_nll: Tensor, perturbed_prob_sum: Tensor) -> None:
        self._add("items", index, answer_nll=answer_nll, perturbed_prob_sum=perturbed_prob_sum)

    def compute(self) -> Tensor:
        items = self._gathered()["items"]
        value = M.normalized_probability(M.answer_probability(items["answer_nll"]), items["perturbed_prob_sum"])
        return torch.tensor(value, dtype=torch.float64)


class RougeLRecall(ItemMean):
    """Mean ROUGE-L recall of greedy generations against the reference answers."""

    def update(self, index: Tensor, generations: Sequence[str], references: Sequence[str]) -> None:  # type: ignore[override]
        super().update(index, torch.as_tensor(M.rouge_l_recall(generations, references)))


class ExactMemorization(ItemMean):
    """Mean share of answer tokens predicted exactly under teacher forcing (final EOS left out)."""

    def update(self, index: Tensor, logits: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        super().update(index, M.exact_memorization_scores(logits, labels))


class ExtractionStrength(ItemMean):
    """Mean extraction strength ``1 - k / N`` (final EOS left out)."""

    def update(self, index: Tensor, logits: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        super().update(index, M.extraction_strength_scores(logits, labels))
