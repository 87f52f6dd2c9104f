"""Results files in the eua and open-unlearning layouts, and forget quality from a retain log."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eua.evaluation.results import (
    ResultsError,
    from_open_unlearning,
    read_results,
    read_retain_reference,
    write_results,
)
from eua.evaluation.tofu import RetainReference, aggregate, per_item_table
from eua.metrics import functional as M
from eua.metrics.tofu import ForgetQuality

# A retain-model log as open-unlearning writes it (older releases: ratio P(wrong) / P(correct),
# aggregator closer_to_1_better), trimmed to the entries forget quality and privleak read.
OPEN_UNLEARNING_RETAIN_LOG = """{
  "forget_Q_A_Prob": {"agg_value": 0.12, "value_by_index": {"0": {"prob": 0.1, "avg_loss": 2.30}, "1": {"prob": 0.14, "avg_loss": 1.97}}},
  "forget_truth_ratio": {
    "agg_value": 0.3611111111,
    "value_by_index": {"0": {"score": 4.0}, "1": {"score": 5.0}, "2": {"score": 6.0}}
  },
  "mia_min_k": {
    "forget": {"agg_value": 2.1, "value_by_index": {"0": {"score": 2.0}, "1": {"score": 2.2}}},
    "holdout": {"agg_value": 2.0, "value_by_index": {"0": {"score": 1.9}, "1": {"score": 2.1}}},
    "auc": 0.45,
    "agg_value": 0.45
  },
  "model_utility": {"agg_value": 0.61}
}
"""


@pytest.fixture()
def retain_log(tmp_path: Path) -> Path:
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text(OPEN_UNLEARNING_RETAIN_LOG)
    return path


def test_open_unlearning_log_gives_truth_ratios(retain_log: Path) -> None:
    reference = read_retain_reference(retain_log)
    assert reference.truth_ratios == [4.0, 5.0, 6.0]
    assert reference.mia_auc == {"mia_min_k": 0.45}


def test_forget_quality_from_open_unlearning_log(retain_log: Path) -> None:
    reference = read_retain_reference(retain_log)
    # Model ratios 1, 2, 3 against 4, 5, 6: exact KS p-value 2 / C(6, 3) = 0.1.
    assert M.forget_quality([1.0, 2.0, 3.0], reference.truth_ratios) == pytest.approx(0.1)


def test_forget_quality_metric_from_log(retain_log: Path) -> None:
    metric = ForgetQuality(retain_truth_ratios=read_retain_reference(retain_log).truth_ratios)
    # Per-item r = exp(correct_nll - wrong_nll) = 1, 2, 3.
    metric.update(torch.arange(3), torch.log(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)), torch.zeros(3))
    assert float(metric.compute()) == pytest.approx(0.1)


def test_prob_mean_scores_are_converted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Current open-unlearning writes s = P(correct) / (P(correct) + P(wrong)) = 1 / (1 + r).
    path = tmp_path / "TOFU_EVAL.json"
    entry = {"agg_value": 0.375, "value_by_index": {"0": {"score": 0.5}, "1": {"score": 0.25}}}
    path.write_text(json.dumps({"forget_truth_ratio": entry}))
    with caplog.at_level(logging.WARNING, logger="eua.evaluation.results"):
        ratios = read_retain_reference(path).truth_ratios
    np.testing.assert_allclose(ratios, [1.0, 3.0])
    assert "fits both conventions" in caplog.text


def test_aggregator_key_decides(tmp_path: Path) -> None:
    path = tmp_path / "TOFU_EVAL.json"
    entry = {"agg_value": 0.5, "aggregator": "closer_to_1_better", "value_by_index": {"0": {"score": 0.5}}}
    path.write_text(json.dumps({"forget_truth_ratio": entry}))
    assert read_retain_reference(path).truth_ratios == [0.5]


def test_missing_items_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "TOFU_EVAL.json"
    entry = {"agg_value": 0.3, "value_by_index": {"0": {"score": 2.0}, "1": None, "2": {"score": None}}}
    path.write_text(json.dumps({"forget_truth_ratio": entry}))
    assert read_retain_reference(path).truth_ratios == [2.0]


def fake_scores(size: int, seed: int, perturbed: bool = True) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    nan = np.full(size, np.nan)
    scores = {
        "answer_nll": generator.uniform(0.5, 3, size),
        "correct_nll": generator.uniform(0.5, 3, size),
        "perturbed_nll": generator.uniform(0.5, 3, size) if perturbed else nan,
        "perturbed_prob_mean": generator.uniform(0, 0.5, size) if perturbed else nan,
        "perturbed_prob_sum": generator.uniform(0, 1.5, size) if perturbed else nan,
        "rouge1_recall": generator.uniform(0, 1, size) if perturbed else nan,
        "rouge_l_recall": generator.uniform(0, 1, size) if perturbed else nan,
        "rouge_l_f1": generator.uniform(0, 1, size) if perturbed else nan,
        "extraction_strength": generator.uniform(0, 1, size),
        "exact_memorization": generator.uniform(0, 1, size),
        "energy_answer": generator.normal(size=size),
        "energy_prompt": generator.normal(size=size),
        "index": np.arange(size),
    }
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        scores[f"mia_{attack}"] = generator.uniform(0, 3, size)
    return scores


def eua_document(retain: RetainReference | None = None) -> dict:
    per_set = {
        "forget": fake_scores(6, 0),
        "retain": fake_scores(8, 1),
        "real_authors": fake_scores(5, 2),
        "world_facts": fake_scores(5, 3),
        "holdout": fake_scores(6, 4, perturbed=False),
    }
    return {
        "meta": {},
        "aggregate": aggregate(per_set, retain),
        "per_item": {name: per_item_table(scores) for name, scores in per_set.items()},
    }


def test_aggregate_without_retain_is_missing() -> None:
    aggregates = eua_document()["aggregate"]
    assert aggregates["forget_quality"] is None
    assert aggregates["privleak"] is None
    assert math.isfinite(aggregates["mia_min_k"])
    assert math.isfinite(aggregates["model_utility"])
    assert math.isfinite(aggregates["energy_fpr95_prompt_holdout"])


def test_forget_quality_missing_message(caplog: pytest.LogCaptureFixture) -> None:
    metric = ForgetQuality()
    metric.update(torch.arange(2), torch.zeros(2), torch.zeros(2))
    with caplog.at_level(logging.WARNING, logger="eua.metrics.tofu"):
        assert math.isnan(float(metric.compute()))
    assert "--model.retain_results" in caplog.text


def test_round_trip_through_open_unlearning_layout(tmp_path: Path) -> None:
    document = eua_document()
    path = write_results(tmp_path / "TOFU_EVAL.json", document, layout="open-unlearning")
    written = json.loads(path.read_text())

    assert written["forget_truth_ratio"]["aggregator"] == "prob_mean"
    assert set(written["mia_min_k"]) == {"forget", "holdout", "auc", "agg_value"}
    assert written["model_utility"]["agg_value"] == pytest.approx(document["aggregate"]["model_utility"])
    assert written["retain_Truth_Ratio"]["agg_value"] == pytest.approx(document["aggregate"]["retain/truth_ratio"])
    np.testing.assert_allclose(read_retain_reference(path).truth_ratios, document["per_item"]["forget"]["truth_ratio"])


def test_both_retain_layouts_same_quality(tmp_path: Path) -> None:
    retain_document = eua_document()
    ours = write_results(tmp_path / "retain.json", retain_document)
    theirs = write_results(tmp_path / "TOFU_EVAL.json", retain_document, layout="open-unlearning")
    model = eua_document(read_retain_reference(ours))["aggregate"]
    other = eua_document(read_retain_reference(theirs))["aggregate"]
    assert model["forget_quality"] == pytest.approx(1.0)  # the same per-item ratios on both sides
    assert other["forget_quality"] == pytest.approx(model["forget_quality"])
    assert other["privleak"] == pytest.approx(0.0)


def test_from_open_unlearning_maps_names() -> None:
    document = from_open_unlearning(json.loads(OPEN_UNLEARNING_RETAIN_LOG))
    assert document["aggregate"]["forget/probability"] == 0.12
    assert document["aggregate"]["model_utility"] == 0.61


def test_unknown_layout_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown results layout"):
        write_results(tmp_path / "x.json", eua_document(), layout="csv")  # type: ignore[arg-type]


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="not found"):
        read_results(tmp_path / "absent.json")


def test_read_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n "a": 1,\n}')
    with pytest.raises(ResultsError, match=r"bad.json:3: invalid JSON"):
        read_results(path)


def test_read_unknown_layout(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"accuracy": 0.5}')
    with pytest.raises(ResultsError, match="neither an eua results file"):
        read_results(path)


def test_retain_log_without_truth_ratios(tmp_path: Path) -> None:
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text('{"model_utility": {"agg_value": 0.5}}')
    with pytest.raises(ResultsError, match="no per-item forget truth ratios"):
        read_retain_reference(path)


def test_truth_ratio_without_value_by_index(tmp_path: Path) -> None:
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text('{"forget_truth_ratio": {"agg_value": 0.5}}')
    with pytest.raises(ResultsError, match="forget_truth_ratio has no value_by_index"):
        read_retain_reference(path)
