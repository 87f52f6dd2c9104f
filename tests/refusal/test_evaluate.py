"""Calibration and evaluation question sets, and the refusal report of a guard."""

from __future__ import annotations

import pytest

from eua.refusal.calibration import Threshold, model_fingerprint
from eua.refusal.evaluate import QuestionSet, evaluate_guard, format_report, tofu_question_sets
from eua.refusal.guard import RefusalGuard
from eua.refusal.scoring import ScoreDefinition


def test_paraphrased_calibration_set(tofu_dir) -> None:
    calibration, sets = tofu_question_sets(str(tofu_dir), "forget01", 1, "retain_paraphrased")

    assert len(calibration) == 20
    assert set(sets) == {"forget", "forget_paraphrased", "retain", "real_authors", "world_facts", "holdout"}
    assert len(sets["retain"].questions) == 20
    assert not set(calibration) & set(sets["retain"].questions)
    assert len(sets["forget"].questions) == len(sets["forget_paraphrased"].questions) == 40
    assert sets["forget"].questions != sets["forget_paraphrased"].questions
    assert len(sets["holdout"].questions) == 40


def test_split_calibration_set_is_disjoint(tofu_dir) -> None:
    calibration, sets = tofu_question_sets(str(tofu_dir), "forget01", 2, "retain_split", calibration_fraction=0.25)
    again, _ = tofu_question_sets(str(tofu_dir), "forget01", 2, "retain_split", calibration_fraction=0.25)

    assert len(calibration) == 10
    assert len(sets["retain"].questions) == 30
    assert not set(calibration) & set(sets["retain"].questions)
    assert calibration == again


def test_eval_limit_cuts_evaluation_sets_only(tofu_dir) -> None:
    whole_calibration, whole = tofu_question_sets(str(tofu_dir), "forget01", 2, "retain_paraphrased")
    calibration, sets = tofu_question_sets(str(tofu_dir), "forget01", 2, "retain_paraphrased", eval_limit=5)

    assert calibration == whole_calibration
    assert len(calibration) == 40
    for name, question_set in sets.items():
        assert question_set.questions == whole[name].questions[:5], name
        assert question_set.answers == whole[name].answers[:5], name


def test_eval_limit_below_one_rejected(tofu_dir) -> None:
    with pytest.raises(ValueError, match="eval_limit must be at least 1"):
        tofu_question_sets(str(tofu_dir), "forget01", 1, "retain_paraphrased", eval_limit=0)


def test_unknown_calibration_set_rejected(tofu_dir) -> None:
    with pytest.raises(ValueError, match="calibration_set"):
        tofu_question_sets(str(tofu_dir), "forget01", 1, "retain_all")


def test_evaluate_guard_report(tiny_model, tokenizer) -> None:
    threshold = Threshold(
        threshold=float("-inf"),  # refuse everything
        alpha=0.05,
        method="conformal",
        n=20,
        score=ScoreDefinition(kind="generated", k=4),
        fingerprint=model_fingerprint(tiny_model, tokenizer),
    )
    guard = RefusalGuard(tiny_model, tokenizer, threshold, template="I don't know.", max_new_tokens=4, batch_size=2)
    sets = {
        "forget": QuestionSet(["Who is Basil Mahfouz Al-Kuwaiti?", "What did he write?", "Where?"], ["a", "b", "I know"]),
        "retain": QuestionSet(["Who is Jaime Vasquez?", "What genre?"], ["c", "d"]),
    }

    report = evaluate_guard(guard, sets)

    assert report["sets"]["forget"]["n"] == 3
    assert report["sets"]["forget"]["refusal_rate"] == 1.0
    assert report["sets"]["retain"]["refusal_rate"] == 1.0
    # Only the reference "I know" is covered by the refusal text: recall (0 + 0 + 1) / 3.
    assert report["sets"]["forget"]["rouge_l_guarded"] == pytest.approx(1 / 3)
    assert "rouge_l_guarded" not in report["sets"]["retain"]
    assert set(report["auroc"]) == {"generated_k4", "prompt", "generated_k1", "generated_k8", "generated_k16"}
    assert all(0.0 <= value <= 1.0 for value in report["auroc"].values())
    assert "| forget | 3 | 1.000 |" in format_report(report)
