"""Scoring evaluation batches of real TOFU rows with the tiny model, the holdout set, and `eua test`."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from eua.cli import main
from eua.data.datamodule import TOFUDataModule
from eua.data.datasets import EvalCollator, EvalDataset
from eua.data.tofu import DataError, load_split
from eua.energy import EnergyHead
from eua.evaluation.scoring import SCORE_FIELDS, score_batch
from eua.metrics import functional as M

REPO = Path(__file__).resolve().parents[2]


def eval_batch(tokenizer, tofu_dir: Path, split: str, correct_field: str, rows: int = 3) -> dict:
    dataset = EvalDataset(load_split(split, tofu_dir)[:rows], tokenizer, max_length=128, correct_field=correct_field)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return EvalCollator(pad)([dataset[i] for i in range(len(dataset))])


def test_score_batch_fields(tiny_model, tokenizer, tofu_dir: Path) -> None:
    batch = eval_batch(tokenizer, tofu_dir, "forget01_perturbed", "paraphrased_answer")
    scores = score_batch(tiny_model, tokenizer, EnergyHead(), batch, max_new_tokens=4)

    assert set(scores) == set(SCORE_FIELDS)
    for name, values in scores.items():
        assert values.shape == (3,), name
        assert torch.isfinite(values).all(), name
    assert torch.equal(scores["mia_loss"], scores["answer_nll"])
    assert not torch.allclose(scores["correct_nll"], scores["answer_nll"])


def test_score_batch_matches_functional(tiny_model, tokenizer, tofu_dir: Path) -> None:
    batch = eval_batch(tokenizer, tofu_dir, "forget01_perturbed", "paraphrased_answer")
    scores = score_batch(tiny_model, tokenizer, EnergyHead(), batch, max_new_tokens=4, generate=False)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["answer"]["input_ids"], attention_mask=batch["answer"]["attention_mask"]).logits
    labels = batch["answer"]["labels"]
    torch.testing.assert_close(scores["exact_memorization"], M.exact_memorization_scores(logits, labels).float())
    torch.testing.assert_close(scores["mia_min_k"], M.min_k_scores(logits, labels, 0.4).float())
    assert torch.isnan(scores["rouge_l_recall"]).all()


def test_correct_equal_to_answer_reuses_pass(tiny_model, tokenizer, tofu_dir: Path) -> None:
    batch = eval_batch(tokenizer, tofu_dir, "real_authors_perturbed", "answer")
    scores = score_batch(tiny_model, tokenizer, EnergyHead(), batch, max_new_tokens=4, generate=False)
    assert torch.equal(scores["correct_nll"], scores["answer_nll"])
    # Three perturbed answers per item: the sum of their probabilities exceeds their mean.
    assert (scores["perturbed_prob_sum"] > scores["perturbed_prob_mean"]).all()


def test_holdout_rows_have_no_perturbed_answers(tiny_model, tokenizer, tofu_dir: Path) -> None:
    batch = eval_batch(tokenizer, tofu_dir, "holdout01", "answer")
    scores = score_batch(tiny_model, tokenizer, EnergyHead(), batch, max_new_tokens=4, generate=False)
    assert torch.isnan(scores["perturbed_nll"]).all()
    assert torch.isfinite(scores["mia_min_k_plus_plus"]).all()


def test_empty_answer_span_is_missing(tiny_model, tokenizer, tofu_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    batch = eval_batch(tokenizer, tofu_dir, "holdout01", "answer")
    batch["answer"]["labels"][0] = -100  # no answer token left in the first item
    with caplog.at_level(logging.WARNING):
        scores = score_batch(tiny_model, tokenizer, EnergyHead(), batch, max_new_tokens=4, generate=False)
    for name in ("answer_nll", "extraction_strength", "mia_zlib", "mia_min_k", "energy_answer", "energy_prompt"):
        assert math.isnan(scores[name][0]), name
        assert torch.isfinite(scores[name][1:]).all(), name
    assert "empty answer span" in caplog.text


def test_datamodule_holdout_matches_forget_split(tofu_dir: Path) -> None:
    datamodule = TOFUDataModule(data_dir=str(tofu_dir), forget_split="forget05", eval_sets=["holdout"])
    rows = datamodule.eval_rows("holdout")
    assert len(rows) == 200
    assert rows == load_split("holdout05", tofu_dir)


def test_datamodule_holdout_needs_forget_name(tofu_dir: Path) -> None:
    datamodule = TOFUDataModule(data_dir=str(tofu_dir), forget_split="custom", eval_sets=["holdout"])
    with pytest.raises(DataError, match="forgetNN"):
        datamodule.eval_rows("holdout")


def test_eua_test_writes_open_unlearning_layout(tmp_path: Path, tiny_model_dir: Path, tofu_dir: Path) -> None:
    retain_log = tmp_path / "retain_TOFU_EVAL.json"
    scores = {str(i): {"score": 0.5 + 0.4 * i} for i in range(4)}
    retain_log.write_text(json.dumps({
        "forget_truth_ratio": {"agg_value": 0.8, "aggregator": "closer_to_1_better", "value_by_index": scores},
        "mia_min_k": {"agg_value": 0.5, "auc": 0.5},
    }))
    results = tmp_path / "TOFU_EVAL.json"
    main(
        ["test", "--config", str(REPO / "configs/evaluate.yaml"), "--data.data_dir", str(tofu_dir),
         "--data.retain_authors", "1", "--data.max_length", "96", "--data.eval_limit", "4",
         "--model.lm.name_or_path", str(tiny_model_dir), "--model.results_path", str(results),
         "--model.results_layout", "open-unlearning", "--model.retain_results", str(retain_log),
         "--model.max_new_tokens", "4", "--trainer.precision", "32-true",
         "--trainer.default_root_dir", str(tmp_path / "runs"),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    )
    written = json.loads(results.read_text())
    assert 0.0 <= written["forget_quality"]["agg_value"] <= 1.0
    assert written["privleak"]["agg_value"] is not None
    assert len(written["forget_truth_ratio"]["value_by_index"]) == 4
    assert len(written["mia_loss"]["holdout"]["value_by_index"]) == 4
    assert "generation" not in json.dumps(written["mia_loss"])
