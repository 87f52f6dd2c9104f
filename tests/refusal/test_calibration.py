"""Threshold quantiles on hand-made scores, the threshold file and the fingerprint check."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

from eua.refusal.calibration import (
    CalibrationError,
    FingerprintMismatchError,
    Threshold,
    min_calibration_size,
    model_fingerprint,
    quantile_rank,
    threshold_from_scores,
)
from eua.refusal.scoring import ScoreDefinition


def shuffled(values: list[float], seed: int = 0) -> torch.Tensor:
    values = list(values)
    random.Random(seed).shuffle(values)
    return torch.tensor(values)


@pytest.mark.parametrize(
    ("n", "alpha", "expected"),
    [
        (19, 0.05, 19),  # (19 + 1) * 0.95 = 19 exactly, with no float rounding up to 20
        (20, 0.1, 19),  # ceil(21 * 0.9) = ceil(18.9)
        (99, 0.01, 99),
        (100, 0.05, 96),  # ceil(101 * 0.95) = ceil(95.95)
        (10, 0.05, 11),  # ceil(11 * 0.95) = ceil(10.45) exceeds n
    ],
)
def test_conformal_rank(n: int, alpha: float, expected: int) -> None:
    assert quantile_rank(n, alpha, "conformal") == expected


def test_conformal_threshold_is_ranked_score() -> None:
    scores = shuffled([float(value) for value in range(1, 21)])  # 1..20

    assert threshold_from_scores(scores, alpha=0.1, method="conformal") == 19.0
    assert threshold_from_scores(scores, alpha=0.25, method="conformal") == 16.0  # ceil(21 * 0.75) = 16


def test_conformal_rank_above_n_is_infinite() -> None:
    scores = shuffled([0.5, -1.0, 2.0, 3.5, 0.0, 1.0, 7.0, 4.0, 2.5, 6.0])

    assert math.isinf(threshold_from_scores(scores, alpha=0.05, method="conformal"))
    assert min_calibration_size(0.05) == 19
    assert min_calibration_size(0.1) == 9
    assert math.isfinite(threshold_from_scores(scores, alpha=0.1, method="conformal"))


def test_conformal_threshold_with_minimum_n() -> None:
    scores = shuffled([float(value) for value in range(19)])

    assert threshold_from_scores(scores, alpha=0.05, method="conformal") == 18.0


def test_empirical_threshold() -> None:
    scores = shuffled([float(value) for value in range(1, 21)])

    assert quantile_rank(20, 0.1, "empirical") == 18
    assert threshold_from_scores(scores, alpha=0.1, method="empirical") == 18.0
    # The empirical rule never exceeds n, so it refuses at most alpha of the calibration scores.
    assert threshold_from_scores(scores[:10], alpha=0.05, method="empirical") == float(scores[:10].max())


def test_threshold_bounds_calibration_false_refusals() -> None:
    scores = torch.randn(500, generator=torch.Generator().manual_seed(0))
    for method in ("conformal", "empirical"):
        tau = threshold_from_scores(scores, alpha=0.05, method=method)
        assert (scores > tau).float().mean() <= 0.05


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_invalid_alpha_rejected(alpha: float) -> None:
    with pytest.raises(CalibrationError, match="alpha"):
        quantile_rank(10, alpha, "conformal")


def test_invalid_inputs_rejected() -> None:
    with pytest.raises(CalibrationError, match="method"):
        quantile_rank(10, 0.05, "median")
    with pytest.raises(CalibrationError, match="no calibration scores"):
        threshold_from_scores(torch.tensor([]))
    with pytest.raises(CalibrationError, match="NaN"):
        threshold_from_scores(torch.tensor([1.0, float("nan")]))


def make_threshold(model, tokenizer, value: float = 1.5) -> Threshold:
    return Threshold(
        threshold=value,
        alpha=0.05,
        method="conformal",
        n=20,
        score=ScoreDefinition(kind="generated", k=4),
        fingerprint=model_fingerprint(model, tokenizer),
        model="tiny",
    )


def test_threshold_file_round_trip(tmp_path, tiny_model, tokenizer) -> None:
    threshold = make_threshold(tiny_model, tokenizer)
    path = threshold.save(tmp_path / "threshold.json")

    data = json.loads(path.read_text())
    assert data["method"] == "conformal"
    assert data["score"]["k"] == 4
    assert "first 4 generated tokens" in data["score"]["description"]
    assert set(data["fingerprint"]) == {"weights", "tokenizer"}
    assert Threshold.load(path) == threshold


def test_threshold_file_errors(tmp_path, tiny_model, tokenizer) -> None:
    with pytest.raises(CalibrationError, match="not found.*eua calibrate"):
        Threshold.load(tmp_path / "missing.json")

    broken = tmp_path / "broken.json"
    broken.write_text('{"threshold": 1.0,\n')
    with pytest.raises(CalibrationError, match="broken.json:2: invalid JSON"):
        Threshold.load(broken)

    partial = tmp_path / "partial.json"
    partial.write_text('{"threshold": 1.0}')
    with pytest.raises(CalibrationError, match="missing fields"):
        Threshold.load(partial)

    with pytest.raises(CalibrationError, match="not finite"):
        make_threshold(tiny_model, tokenizer, value=math.inf).save(tmp_path / "inf.json")


def test_fingerprint_matches_same_model(tiny_model, tokenizer) -> None:
    threshold = make_threshold(tiny_model, tokenizer)

    threshold.verify(copy.deepcopy(tiny_model), tokenizer)


def test_fingerprint_mismatch_rejected(tiny_model, tokenizer) -> None:
    threshold = make_threshold(tiny_model, tokenizer)
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)

    with pytest.raises(FingerprintMismatchError) as error:
        threshold.verify(changed, tokenizer)

    message = str(error.value)
    assert threshold.fingerprint["weights"] in message
    assert model_fingerprint(changed, tokenizer)["weights"] in message
    assert "eua calibrate" in message
