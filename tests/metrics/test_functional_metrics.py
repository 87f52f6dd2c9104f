"""Each functional metric against values computed by hand on small arrays."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from eua.metrics import functional as M

LN2 = math.log(2.0)
IGNORE = -100


def logits_predicting(predictions: list[int], vocab_size: int = 10) -> torch.Tensor:
    """Logits ``[1, L, V]`` whose argmax at position ``t`` is ``predictions[t]``."""
    logits = torch.zeros(1, len(predictions), vocab_size)
    for position, token in enumerate(predictions):
        logits[0, position, token] = 5.0
    return logits


# ------------------------------------------------------------------------------ probability


def test_answer_probability_one_answer() -> None:
    np.testing.assert_allclose(M.answer_probability([0.0, LN2]), [1.0, 0.5])


def test_answer_probability_averages_probabilities() -> None:
    # Two answers with NLL 0 and ln 4: probabilities 1 and 0.25, mean 0.625.
    np.testing.assert_allclose(M.answer_probability([[0.0, 2 * LN2]]), [0.625])


def test_truth_ratio_direction() -> None:
    # P(correct) = 0.5, P(wrong) = 1: the ratio wrong / correct is 2.
    np.testing.assert_allclose(M.truth_ratios([LN2], [0.0]), [2.0])


def test_truth_ratio_averages_wrong_nll_first() -> None:
    # Mean of the NLLs 0 and ln 4 is ln 2, so P(wrong) = 0.5 and r = 0.5 (not 0.625).
    np.testing.assert_allclose(M.truth_ratios([0.0], [[0.0, 2 * LN2]]), [0.5])


@pytest.mark.parametrize(
    ("aggregator", "expected"),
    [("closer_to_1_better", (1.0 + 0.25) / 2), ("true_better", 0.0), ("prob_mean", (0.5 + 0.2) / 2)],
)
def test_truth_ratio_aggregators(aggregator: str, expected: float) -> None:
    assert M.aggregate_truth_ratios([1.0, 4.0], aggregator) == pytest.approx(expected)


def test_truth_ratio_true_better_clips() -> None:
    assert M.aggregate_truth_ratios([0.25, 2.0], "true_better") == pytest.approx(0.375)


def test_truth_ratio_from_nll() -> None:
    # r = exp(correct_nll - wrong_nll) = exp(ln 2) = 2 and 1 / 2: min(r, 1/r) = 0.5 for both.
    assert M.truth_ratio([LN2, 0.0], [0.0, LN2], "closer_to_1_better") == pytest.approx(0.5)


def test_truth_ratio_drops_missing_items() -> None:
    assert M.aggregate_truth_ratios([1.0, math.nan], "closer_to_1_better") == 1.0


def test_truth_ratio_all_missing_is_nan() -> None:
    assert math.isnan(M.aggregate_truth_ratios([math.nan], "true_better"))


def test_truth_ratio_unknown_aggregator() -> None:
    with pytest.raises(ValueError, match="unknown truth-ratio aggregator"):
        M.aggregate_truth_ratios([1.0], "mean")


def test_forget_quality_identical_samples() -> None:
    assert M.forget_quality([0.5, 1.0, 2.0], [0.5, 1.0, 2.0]) == pytest.approx(1.0)


def test_forget_quality_disjoint_samples() -> None:
    # Exact two-sided KS test, n = m = 3, D = 1: 2 of the C(6, 3) = 20 orderings are as extreme.
    assert M.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)


def test_forget_quality_same_for_monotone_transforms() -> None:
    model = np.array([0.3, 0.9, 1.4, 2.2, 0.7])
    retain = np.array([1.1, 0.8, 1.9, 3.0, 1.2, 0.6])
    direct = M.forget_quality(model, retain)
    assert M.forget_quality(1 / (1 + model), 1 / (1 + retain)) == pytest.approx(direct)
    assert M.forget_quality(1 / model, 1 / retain) == pytest.approx(direct)


def test_forget_quality_one_item() -> None:
    assert M.forget_quality([1.0], [1.0]) == pytest.approx(1.0)


def test_normalized_probability() -> None:
    assert M.normalized_probability([0.5, 0.2], [0.5, 0.6]) == pytest.approx((0.5 + 0.25) / 2)


def test_model_utility_harmonic_mean() -> None:
    # Eight ones and one 0.5: 9 / (8 + 2) = 0.9.
    assert M.model_utility([1.0] * 8 + [0.5]) == pytest.approx(0.9)


def test_model_utility_zero_and_missing() -> None:
    assert M.model_utility([1.0] * 8 + [0.0]) == 0.0
    assert math.isnan(M.model_utility([1.0] * 8 + [math.nan]))


# ------------------------------------------------------------------------------ ROUGE


def test_rouge_l_recall() -> None:
    assert M.rouge_l_recall(["the cat sat"], ["the cat sat on the mat"])[0] == pytest.approx(0.5)


def test_rouge_uses_stemming() -> None:
    assert M.rouge_l_recall(["cats running"], ["cat runs"])[0] == pytest.approx(1.0)


def test_rouge_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 generations for 1 references"):
        M.rouge_l_recall(["a", "b"], ["a"])


# ------------------------------------------------------------------------------ memorization

# A prompt of two tokens, then the answer 5 6 7 and the end-of-turn token 2. Position t predicts token t + 1.
LABELS = torch.tensor([[IGNORE, IGNORE, 5, 6, 7, 2]])


def test_exact_memorization_partial() -> None:
    logits = logits_predicting([0, 5, 9, 7, 3, 0])  # 5 and 7 right, 6 wrong, the EOS prediction ignored
    assert M.exact_memorization_scores(logits, LABELS)[0].item() == pytest.approx(2 / 3)


def test_extraction_strength_suffix() -> None:
    logits = logits_predicting([0, 5, 9, 7, 3, 0])  # the longest correct suffix is "7": k = 2
    assert M.extraction_strength_scores(logits, LABELS)[0].item() == pytest.approx(1 - 2 / 3)


def test_extraction_strength_all_correct() -> None:
    logits = logits_predicting([0, 5, 6, 7, 2, 0])
    assert M.extraction_strength_scores(logits, LABELS)[0].item() == 1.0
    assert M.exact_memorization_scores(logits, LABELS)[0].item() == 1.0


def test_extraction_strength_last_token_wrong() -> None:
    logits = logits_predicting([0, 5, 6, 9, 2, 0])
    assert M.extraction_strength_scores(logits, LABELS)[0].item() == 0.0


def test_memorization_ignores_eos_prediction() -> None:
    logits = logits_predicting([0, 5, 6, 7, 9, 0])  # EOS predicted wrongly
    assert M.exact_memorization_scores(logits, LABELS)[0].item() == 1.0


def test_memorization_empty_span_is_missing(caplog: pytest.LogCaptureFixture) -> None:
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 2]])  # only the end-of-turn token
    logits = logits_predicting([0, 0, 2, 0])
    with caplog.at_level(logging.WARNING, logger="eua.metrics.functional"):
        em = M.exact_memorization_scores(logits, labels)
        es = M.extraction_strength_scores(logits, labels)
        min_k = M.min_k_scores(logits, labels)
    assert math.isnan(em[0])
    assert math.isnan(es[0])
    assert math.isnan(min_k[0])
    assert "exact memorization is missing for 1 item" in caplog.text
    assert "extraction strength is missing for 1 item" in caplog.text


def test_memorization_batch_with_padding() -> None:
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6, 7, 2], [IGNORE, 5, 2, IGNORE, IGNORE, IGNORE]])
    logits = torch.cat([logits_predicting([0, 5, 9, 7, 3, 0]), logits_predicting([9, 5, 0, 0, 0, 0])])  # second row: 5 predicted as 9
    np.testing.assert_allclose(M.exact_memorization_scores(logits, labels), [2 / 3, 0.0])


# ------------------------------------------------------------------------------ membership inference


def log_prob_logits(rows: list[list[float]]) -> torch.Tensor:
    """Logits equal to log-probabilities, so ``log_softmax`` returns them unchanged."""
    return torch.log(torch.tensor([rows], dtype=torch.float32))


def test_min_k_lowest_share() -> None:
    # Target probabilities 0.5, 0.25, 0.125 (tokens 0, 1, 2), then the EOS position.
    logits = log_prob_logits(
        [[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25], [0.125, 0.125, 0.125, 0.625], [0.25] * 4, [0.25] * 4]
    )
    labels = torch.tensor([[IGNORE, 0, 1, 2, 3]])
    # k = 0.4 keeps max(1, floor(1.2)) = 1 token: minus log 0.125 = 3 ln 2.
    assert M.min_k_scores(logits, labels, k=0.4)[0].item() == pytest.approx(3 * LN2, rel=1e-5)
    # k = 1 keeps all: (ln 2 + 2 ln 2 + 3 ln 2) / 3 = 2 ln 2.
    assert M.min_k_scores(logits, labels, k=1.0)[0].item() == pytest.approx(2 * LN2, rel=1e-5)


def test_min_k_plus_plus_standardises() -> None:
    # p = (0.5, 0.25, 0.25): mu = -1.5 ln 2 and sigma = 0.5 ln 2, so token 0 scores +1, token 1 scores -1.
    logits = log_prob_logits([[0.5, 0.25, 0.25]] * 3)
    assert M.min_k_plus_plus_scores(logits, torch.tensor([[IGNORE, 0, 2]]), k=1.0)[0].item() == pytest.approx(-1.0, rel=1e-4)
    assert M.min_k_plus_plus_scores(logits, torch.tensor([[IGNORE, 1, 2]]), k=1.0)[0].item() == pytest.approx(1.0, rel=1e-4)


def test_zlib_divides_by_compressed_length() -> None:
    # zlib.compress(b"aaaa") is 12 bytes long.
    np.testing.assert_allclose(M.zlib_scores([2.4], ["aaaa"]), [0.2])


def test_mia_auc_convention() -> None:
    # Forget items with lower loss than holdout items look like members: AUC 1.
    assert M.mia_auc([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert M.mia_auc([3.0, 4.0], [1.0, 2.0]) == 0.0


def test_mia_auc_ties() -> None:
    assert M.mia_auc([1.0, 1.0], [1.0]) == 0.5


def test_mia_auc_empty_is_missing() -> None:
    assert math.isnan(M.mia_auc([], [1.0]))


def test_privleak() -> None:
    assert M.privleak(0.75, 0.5) == pytest.approx(-50.0)
    assert M.privleak(0.5, 0.5) == 0.0
    assert math.isnan(M.privleak(0.5, 1.0))


# ------------------------------------------------------------------------------ energy


def test_energy_auroc() -> None:
    assert M.energy_auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert M.energy_auroc([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_energy_aupr() -> None:
    # Ranked 3 (forget), 2 (other), 1 (forget): AP = 0.5 * 1 + 0.5 * 2/3.
    assert M.energy_aupr([3.0, 1.0], [2.0]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_energy_fpr_at_tpr() -> None:
    forget = np.arange(1.0, 21.0)  # 20 items: 95 % means 19 flagged, so the threshold is 2
    assert M.energy_fpr_at_tpr(forget, [1.5, 10.5], 0.95) == pytest.approx(0.5)
    assert M.energy_fpr_at_tpr([3.0, 4.0], [1.0, 2.0]) == 0.0
    assert M.energy_fpr_at_tpr([3.0, 1.0], [2.0]) == 1.0


def test_energy_one_item_each() -> None:
    assert M.energy_auroc([2.0], [1.0]) == 1.0
    assert M.energy_fpr_at_tpr([2.0], [1.0]) == 0.0


def test_energy_missing_values_dropped() -> None:
    assert M.energy_auroc([3.0, math.nan], [1.0]) == 1.0
    assert math.isnan(M.energy_aupr([math.nan], [1.0]))
