"""Tests of the re-emergence attacks on the tiny test model and the real TOFU files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from eua.attacks.evaluation import Scorer, read_retain_truth_ratios, read_threshold, refusal_rate
from eua.attacks.quantize import quantize_groupwise, quantize_int8, quantize_model
from eua.attacks.relearn import relearn, split_authors
from eua.attacks.rephrase import PREFIX_TEMPLATES, cut_first_sentence, rephrase_rows
from eua.attacks.runner import QuantizeSettings, RelearnSettings, format_attack_table, run_attacks
from eua.data.datasets import QACollator, QADataset
from eua.data.tofu import DataError, load_split
from eua.energy import EnergyHead
from eua.evaluation.results import ResultsError
from eua.objectives.base import mean_nll

# Relative slack for float32 rounding when comparing an error with half a quantization step.
FLOAT_SLACK = 1e-5


def assert_within_half_step(original: torch.Tensor, dequantized: torch.Tensor, step: torch.Tensor) -> None:
    error = (original.float() - dequantized.float()).abs()
    bound = step / 2 * (1 + FLOAT_SLACK) + 1e-8
    worst = (error - bound).max()
    assert bool((error <= bound).all()), f"an error exceeds half a step by {worst.item():.3g}"


# ------------------------------------------------------------------------------ quantization


def test_int8_error_within_half_step() -> None:
    weight = torch.randn(16, 70, generator=torch.Generator().manual_seed(0))
    weight[3] = 0.0  # an all-zero row must survive unchanged
    quantized = quantize_int8(weight)
    dequantized = quantized.dequantize()

    assert dequantized.shape == weight.shape
    assert int(quantized.codes.min()) >= -127
    assert int(quantized.codes.max()) <= 127
    assert_within_half_step(weight, dequantized, quantized.step())
    assert bool((dequantized[3] == 0).all())
    assert not torch.equal(dequantized, weight)


def test_int4_groupwise_error_within_half_step() -> None:
    # 70 columns with groups of 32 leaves a padded last group.
    weight = torch.randn(8, 70, generator=torch.Generator().manual_seed(1)) * 0.02 + 0.01
    quantized = quantize_groupwise(weight, bits=4, group_size=32)
    dequantized = quantized.dequantize()

    assert dequantized.shape == weight.shape
    assert quantized.codes.shape == (8, 3, 32)
    assert int(quantized.codes.min()) >= 0
    assert int(quantized.codes.max()) <= 15
    assert_within_half_step(weight, dequantized, quantized.step())
    distinct = dequantized[:, :32].unique(dim=None)
    assert distinct.numel() <= 8 * 16


def test_quantize_model_changes_only_linear_weights(tiny_model: nn.Module) -> None:
    original = copy.deepcopy(tiny_model)
    quantized = quantize_model(tiny_model, "int4", group_size=16)

    linear_names = {name for name, module in original.named_modules() if isinstance(module, nn.Linear)}
    assert set(quantized) == linear_names - {"lm_head"}
    before = dict(original.named_modules())
    for name, module in tiny_model.named_modules():
        if name in quantized:
            assert_within_half_step(before[name].weight, module.weight, quantized[name].step())
            assert not torch.equal(module.weight, before[name].weight), name
    for (name, after), (_, start) in zip(tiny_model.named_parameters(), original.named_parameters()):
        if name.removesuffix(".weight") not in quantized:
            assert torch.equal(after, start), f"{name} changed but is not a quantized linear weight"


def test_quantize_rejects_unknown_method(tiny_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="unknown quantization method 'int3'"):
        quantize_model(tiny_model, "int3")


# ------------------------------------------------------------------------------ rephrased queries


def test_rephrase_views_built_as_specified(tofu_dir: Path) -> None:
    rows = load_split("forget01_perturbed", tofu_dir)

    paraphrased, kept = rephrase_rows(rows, "paraphrased")
    assert kept == list(range(len(rows)))
    assert [row["question"] for row in paraphrased] == [row["paraphrased_question"] for row in rows]
    assert [row["answer"] for row in paraphrased] == [row["answer"] for row in rows]

    for view, template in PREFIX_TEMPLATES.items():
        rewritten, _ = rephrase_rows(rows, view)
        prefix = template.split("{question}")[0]
        assert rewritten[0]["question"] == prefix + rows[0]["question"], view
    assert rephrase_rows(rows, "one_word")[0][0]["question"].startswith("Answer in one word. ")
    assert "novel I am writing" in rephrase_rows(rows, "novel")[0][0]["question"]


def test_cut_first_sentence() -> None:
    assert cut_first_sentence("Consider the author Basil. Where was he born?") == "Where was he born?"
    assert cut_first_sentence("Think of it! Is it true? Yes.") == "Is it true? Yes."
    assert cut_first_sentence("Where was Basil born?") is None

    rows = [
        {"question": "One sentence only?", "answer": "a"},
        {"question": "Context here. The real question?", "answer": "b"},
    ]
    rewritten, kept = rephrase_rows(rows, "cut_first_sentence")
    assert kept == [1]
    assert rewritten[0]["question"] == "The real question?"


def test_rephrase_without_paraphrase_fails() -> None:
    rows = [{"question": "Who?", "answer": "Someone."}]
    with pytest.raises(DataError, match="row 1 of split 'forget' has no 'paraphrased_question'"):
        rephrase_rows(rows, "paraphrased")


# ------------------------------------------------------------------------------ relearning


def test_split_authors_halves_each_author() -> None:
    rows = [{"question": str(i), "answer": "a"} for i in range(40)]
    train, held_out = split_authors(rows)
    assert train == [*range(0, 10), *range(20, 30)]
    assert held_out == [*range(10, 20), *range(30, 40)]

    with pytest.raises(DataError, match="30 rows, not a multiple of 20"):
        split_authors(rows[:30], split="odd")


def test_relearn_raises_lowered_probability(tiny_model: nn.Module, tokenizer, tofu_dir: Path) -> None:
    rows = load_split("forget01_perturbed", tofu_dir)[:6]
    scorer = Scorer(tokenizer, EnergyHead(1.0), max_length=128, batch_size=16, max_new_tokens=4)

    def probability(model: nn.Module) -> float:
        scores = scorer.score(model, rows, "paraphrased_answer", generate=False)
        return float(np.exp(-scores["answer_nll"]).mean())

    # Lower the forget probability first with a few gradient-ascent steps (an unlearning stand-in).
    lowered = copy.deepcopy(tiny_model)
    optimizer = torch.optim.SGD(lowered.parameters(), lr=0.5)
    encoded = QADataset(rows, tokenizer, 128)
    batch = QACollator(tokenizer.pad_token_id)([encoded[i] for i in range(len(rows))])
    for _ in range(5):
        logits = lowered(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = -mean_nll(logits, batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    start = probability(tiny_model)
    after_unlearning = probability(lowered)
    assert after_unlearning < start

    relearned, losses = relearn(lowered, tokenizer, rows, steps=6, learning_rate=3e-3, batch_size=6, max_length=128)
    assert len(losses) == 6
    assert probability(relearned) > after_unlearning
    assert probability(lowered) == pytest.approx(after_unlearning), "relearn must not change its input model"


# ------------------------------------------------------------------------------ runner and guards


def test_refusal_rate_counts_energy_above_threshold() -> None:
    energies = np.array([-3.0, -1.0, 0.5, 2.0])
    assert refusal_rate(energies, -0.5) == 0.5
    assert refusal_rate(energies, None) is None


def test_threshold_from_number_or_file(tmp_path: Path) -> None:
    assert read_threshold(1.5) == 1.5
    assert read_threshold("-2") == -2.0
    good = tmp_path / "guard.json"
    good.write_text(json.dumps({"threshold": 0.25}))
    assert read_threshold(str(good)) == 0.25

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"energy": 1.0}))
    with pytest.raises(ValueError, match='needs a finite number under the key "threshold"'):
        read_threshold(str(bad))
    with pytest.raises(FileNotFoundError, match="neither a number nor an existing JSON file"):
        read_threshold(str(tmp_path / "missing.json"))


def test_threshold_file_of_other_score_rejected(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.json"
    prompt.write_text(json.dumps({"threshold": -18.2, "score": {"kind": "prompt", "k": 8}}))
    assert read_threshold(str(prompt)) == -18.2

    generated = tmp_path / "generated.json"
    generated.write_text(json.dumps({"threshold": -18.2, "score": {"kind": "generated", "k": 8}}))
    with pytest.raises(ValueError, match=r"generated\.json was calibrated on the 'generated' score.*--score\.kind prompt"):
        read_threshold(str(generated))


def test_retain_results_without_forget_set_fails(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"aggregate": {}, "per_item": {"retain": {}}}))
    with pytest.raises(ResultsError, match="no per_item.forget.truth_ratio"):
        read_retain_truth_ratios(str(results), 40)


def test_runner_end_to_end(tiny_spec, tofu_dir: Path, tmp_path: Path) -> None:
    retain = tmp_path / "retain.json"
    retain.write_text(json.dumps({"aggregate": {}, "per_item": {"forget": {"index": list(range(40)), "truth_ratio": [0.6] * 40}}}))
    output = tmp_path / "attacks.json"

    document = run_attacks(
        copy.deepcopy(tiny_spec),
        data_dir=str(tofu_dir),
        forget_split="forget01",
        retain_authors=1,
        relearn=RelearnSettings(sources=["forget_half"], steps=2, learning_rate=1e-3, batch_size=8),
        quantize=QuantizeSettings(methods=["int4"], group_size=16),
        rephrase_views=["paraphrased", "cut_first_sentence"],
        threshold=0.0,
        retain_results=str(retain),
        max_length=256,
        max_new_tokens=2,
        output=str(output),
    )

    written = json.loads(output.read_text())
    assert list(written["attacks"]) == [
        "relearn/forget_half", "quantize/int4_g16", "rephrase/paraphrased", "rephrase/cut_first_sentence"
    ]
    relearned = written["attacks"]["relearn/forget_half"]
    assert relearned["after"]["forget/items"] == 20
    assert relearned["before"]["forget/probability"] != relearned["after"]["forget/probability"]
    assert written["attacks"]["rephrase/cut_first_sentence"]["items"] == 0
    assert written["unattacked"]["forget_quality"] is not None
    assert 0.0 <= written["unattacked"]["forget/refusal_rate"] <= 1.0
    table = format_attack_table(document)
    assert "| quantize/int4_g16 | 40 |" in table

    with pytest.raises(FileExistsError, match="already exists"):
        run_attacks(copy.deepcopy(tiny_spec), data_dir=str(tofu_dir), forget_split="forget01", output=str(output))


def test_runner_missing_split_fails(tiny_spec, tofu_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="forget02_perturbed.jsonl' not found"):
        run_attacks(copy.deepcopy(tiny_spec), data_dir=str(tofu_dir), forget_split="forget02", output=str(tmp_path / "a.json"))


def test_runner_split_without_paraphrases_fails(tiny_spec, tofu_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "tofu"
    data.mkdir()
    for split in ("forget01", "retain99", "retain_perturbed"):
        (data / f"{split}.jsonl").write_bytes((tofu_dir / f"{split}.jsonl").read_bytes())
    rows = [json.loads(line) for line in (tofu_dir / "forget01_perturbed.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("paraphrased_question")
    (data / "forget01_perturbed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    with pytest.raises(DataError, match="no 'paraphrased_question'"):
        run_attacks(
            copy.deepcopy(tiny_spec), data_dir=str(data), forget_split="forget01", retain_authors=1,
            attacks=["rephrase"], rephrase_views=["paraphrased"], max_length=128, max_new_tokens=2,
            output=str(tmp_path / "a.json"),
        )


def test_runner_rejects_folder_without_model(tofu_dir: Path, tmp_path: Path, tiny_spec) -> None:
    spec = copy.deepcopy(tiny_spec)
    spec.name_or_path = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        run_attacks(spec, data_dir=str(tofu_dir), forget_split="forget01", output=str(tmp_path / "a.json"))

    spec.name_or_path = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*missing not found"):
        run_attacks(spec, data_dir=str(tofu_dir), forget_split="forget01", output=str(tmp_path / "a.json"))
