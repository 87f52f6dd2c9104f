"""Query scoring, the refusal guard on single and mixed batches, and the refusal metrics."""

from __future__ import annotations

import copy

import pytest
import torch

from eua.refusal.calibration import FingerprintMismatchError, Threshold, model_fingerprint
from eua.refusal.guard import RefusalGuard, load_refusals
from eua.refusal.metrics import GuardedRougeL, RefusalRate
from eua.refusal.scoring import ScoreDefinition, encode_questions, generate_with_energy, query_energy, score_questions, step_mask

QUESTIONS = [
    "Who wrote the novel about the lighthouse keeper?",
    "What genre does Jaime Vasquez write in?",
    "Where was the author born?",
]


def test_step_mask_stops_after_first_stop_token() -> None:
    tokens = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])

    mask = step_mask(tokens, stop_ids=[2])

    assert mask.tolist() == [[True, True, False, False], [True, True, True, True], [True, False, False, False]]


def test_query_energy_definitions() -> None:
    energies = torch.tensor([[1.0, 3.0, 100.0], [2.0, 4.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])

    prompt = query_energy(energies, mask, ScoreDefinition(kind="prompt"))
    first_two = query_energy(energies, mask, ScoreDefinition(kind="generated", k=2))
    first_three = query_energy(energies, mask, ScoreDefinition(kind="generated", k=3))

    assert prompt.tolist() == [1.0, 2.0]
    assert first_two.tolist() == [2.0, 3.0]
    assert first_three.tolist() == [2.0, 4.0]  # the masked step 100.0 is left out


def test_score_definition_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        ScoreDefinition(kind="answer")
    with pytest.raises(ValueError, match="k must be"):
        ScoreDefinition(k=0)


@pytest.mark.parametrize("definition", [ScoreDefinition(kind="prompt"), ScoreDefinition(kind="generated", k=4)])
def test_batched_energy_matches_single(tiny_model, tokenizer, definition) -> None:
    batched = score_questions(tiny_model, tokenizer, QUESTIONS, definition, batch_size=8)
    single = torch.cat([score_questions(tiny_model, tokenizer, [question], definition) for question in QUESTIONS])

    assert batched.shape == (len(QUESTIONS),)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_prompt_energy_is_first_generated_step(tiny_model, tokenizer) -> None:
    prompt = score_questions(tiny_model, tokenizer, QUESTIONS, ScoreDefinition(kind="prompt"))
    one_step = score_questions(tiny_model, tokenizer, QUESTIONS, ScoreDefinition(kind="generated", k=1))

    torch.testing.assert_close(prompt, one_step)


def guard_for(model, tokenizer, value: float, **kwargs) -> RefusalGuard:
    threshold = Threshold(
        threshold=value,
        alpha=0.05,
        method="conformal",
        n=20,
        score=ScoreDefinition(kind="generated", k=4),
        fingerprint=model_fingerprint(model, tokenizer),
    )
    return RefusalGuard(model, tokenizer, threshold, max_new_tokens=8, **kwargs)


def energies_and_answers(model, tokenizer, questions):
    prompt = encode_questions(tokenizer, questions)
    generation = generate_with_energy(model, tokenizer, prompt, ScoreDefinition(kind="generated", k=4), 8)
    return generation.energies, generation.answers


def test_guard_refuses_over_threshold_query(tiny_model, tokenizer) -> None:
    energies, answers = energies_and_answers(tiny_model, tokenizer, QUESTIONS[:1])
    guard = guard_for(tiny_model, tokenizer, float(energies[0]) - 1e-3, template="No answer to: {question}")

    output = guard(QUESTIONS[:1])

    assert output.refused.tolist() == [True]
    assert output.answers == [f"No answer to: {QUESTIONS[0]}"]
    assert output.model_answers == answers
    torch.testing.assert_close(output.energies, energies)


def test_guard_passes_under_threshold_query(tiny_model, tokenizer) -> None:
    energies, answers = energies_and_answers(tiny_model, tokenizer, QUESTIONS[:1])
    guard = guard_for(tiny_model, tokenizer, float(energies[0]) + 1e-3, template="No answer.")

    output = guard(QUESTIONS[:1])

    assert output.refused.tolist() == [False]
    assert output.answers == answers


def test_guard_mixed_batch(tiny_model, tokenizer, tofu_dir) -> None:
    energies, answers = energies_and_answers(tiny_model, tokenizer, QUESTIONS)
    assert len(set(energies.tolist())) == len(QUESTIONS), "the test needs distinct energies"
    middle = float(energies.sort().values[1])
    refusals = load_refusals("idontknow", str(tofu_dir))
    guard = guard_for(tiny_model, tokenizer, middle, refusals=refusals, batch_size=2)

    output = guard(QUESTIONS)

    expected = (energies > middle).tolist()
    assert output.refused.tolist() == expected
    assert sum(expected) == 1
    for question, answer, model_answer, refused in zip(QUESTIONS, output.answers, answers, expected):
        if refused:
            assert answer in refusals
            assert answer == guard.refusal_text(question)  # the same question always gets the same refusal
        else:
            assert answer == model_answer
    records = output.records()
    assert [record["refused"] for record in records] == expected
    assert records[0]["energy"] == pytest.approx(float(energies[0]), abs=1e-4)


def test_guard_rejects_other_model(tiny_model, tokenizer) -> None:
    guard = guard_for(tiny_model, tokenizer, 0.0)
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.01)

    with pytest.raises(FingerprintMismatchError, match="calibrated for another model"):
        RefusalGuard(other, tokenizer, guard.threshold)


def test_guard_rejects_bad_template(tiny_model, tokenizer) -> None:
    with pytest.raises(ValueError, match="refusal template"):
        guard_for(tiny_model, tokenizer, 0.0, template="Sorry, {name}")


def test_refusal_metrics() -> None:
    rate = RefusalRate()
    rate.update(torch.tensor([True, False]))
    rate.update(torch.tensor([True, True]))
    assert float(rate.compute()) == pytest.approx(0.75)

    rouge = GuardedRougeL()
    rouge.update(["Paris is the capital", "I don't know."], ["The capital is Paris", "Rome"])
    assert float(rouge.compute()) == pytest.approx((2 / 4 + 0.0) / 2)
    with pytest.raises(ValueError, match="references"):
        rouge.update(["a"], ["a", "b"])
