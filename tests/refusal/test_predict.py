"""``eua predict`` and ``eua calibrate`` through the command-line entry point, and bad input files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eua.cli import main
from eua.data.tofu import DataError
from eua.models.loading import load_model, load_tokenizer
from eua.refusal.calibration import CalibrationError, FingerprintMismatchError, Threshold, model_fingerprint
from eua.refusal.data import read_questions
from eua.refusal.guard import load_refusals
from eua.refusal.scoring import ScoreDefinition, score_questions

REPO_ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [
    {"id": "a", "question": "Who wrote the novel about the lighthouse keeper?"},
    {"id": "b", "question": "What genre does Jaime Vasquez write in?"},
    {"id": "c", "question": "Where was the author born?"},
    {"id": "d", "question": "What awards has the author won?"},
]


def write_questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def predict_args(model_dir: Path, tofu_dir: Path, questions: Path, output: Path, threshold: Path | None) -> list[str]:
    args = [
        "predict",
        "--config",
        str(REPO_ROOT / "configs" / "predict.yaml"),
        "--model.lm.name_or_path",
        str(model_dir),
        "--model.max_new_tokens",
        "8",
        "--data.data_dir",
        str(tofu_dir),
        "--data.predict_file",
        str(questions),
        "--data.eval_batch_size",
        "3",
        "--trainer.accelerator",
        "cpu",
        "--trainer.default_root_dir",
        str(output.parent),
        "--trainer.callbacks.init_args.output",
        str(output),
    ]
    if threshold is not None:
        args += ["--model.refusal.threshold", str(threshold)]
    return args


@pytest.fixture()
def threshold_file(tmp_path, tiny_spec) -> tuple[Path, torch.Tensor]:
    """A threshold at the median query energy of ``QUESTIONS``, with the model's fingerprint."""
    model, tokenizer = load_model(tiny_spec).eval(), load_tokenizer(tiny_spec)
    definition = ScoreDefinition(kind="generated", k=4)
    energies = score_questions(model, tokenizer, [row["question"] for row in QUESTIONS], definition)
    threshold = Threshold(
        threshold=float(energies.median()),
        alpha=0.05,
        method="conformal",
        n=20,
        score=definition,
        fingerprint=model_fingerprint(model, tokenizer),
    )
    return threshold.save(tmp_path / "refusal_threshold.json"), energies


def test_predict_writes_guarded_answers(tmp_path, tiny_model_dir, tofu_dir, threshold_file) -> None:
    path, energies = threshold_file
    questions = write_questions(tmp_path / "questions.jsonl", QUESTIONS)
    output = tmp_path / "out" / "predictions.jsonl"

    main(predict_args(tiny_model_dir, tofu_dir, questions, output, path))

    records = [json.loads(line) for line in output.read_text().splitlines()]
    threshold = Threshold.load(path).threshold
    refusals = load_refusals("idontknow", str(tofu_dir))
    assert [record["id"] for record in records] == ["a", "b", "c", "d"]
    assert torch.tensor([record["energy"] for record in records]) == pytest.approx(energies, abs=1e-4)
    assert sum(record["refused"] for record in records) == 2  # the two above the median
    for record in records:
        assert record["refused"] == (record["energy"] > threshold)
        if record["refused"]:
            assert record["answer"] in refusals
        else:
            assert record["answer"] == record["model_answer"]
    assert not output.with_name(output.name + ".partial").exists()


def test_predict_without_threshold_answers_all(tmp_path, tiny_model_dir, tofu_dir) -> None:
    questions = write_questions(tmp_path / "questions.jsonl", QUESTIONS[:2])
    output = tmp_path / "predictions.jsonl"

    main(predict_args(tiny_model_dir, tofu_dir, questions, output, threshold=None) + ["--model.refusal.threshold", "null"])

    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["refused"] for record in records] == [False, False]
    assert all(record["answer"] == record["model_answer"] for record in records)


def test_predict_rejects_threshold_of_other_model(tmp_path, tiny_model_dir, tofu_dir, threshold_file) -> None:
    path, _ = threshold_file
    data = json.loads(path.read_text())
    data["fingerprint"]["weights"] = "0123456789abcdef"
    path.write_text(json.dumps(data))
    questions = write_questions(tmp_path / "questions.jsonl", QUESTIONS[:1])

    with pytest.raises(FingerprintMismatchError, match="0123456789abcdef"):
        main(predict_args(tiny_model_dir, tofu_dir, questions, tmp_path / "p.jsonl", path))


def test_predict_malformed_line_names_file_and_line(tmp_path, tiny_model_dir, tofu_dir, threshold_file) -> None:
    path, _ = threshold_file
    questions = tmp_path / "bad.jsonl"
    questions.write_text('{"question": "Who is Basil Mahfouz Al-Kuwaiti?"}\n\n{"question": "unterminated\n')

    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        main(predict_args(tiny_model_dir, tofu_dir, questions, tmp_path / "p.jsonl", path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "ok"}\n["a list"]\n', r":2: expected a JSON object"),
        ('{"id": 1}\n', r":1: field 'question' must be a non-empty string"),
        ('{"question": "  "}\n', r":1: field 'question'"),
        ("\n\n", r"no questions"),
    ],
)
def test_read_questions_errors(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text(content)

    with pytest.raises(DataError, match=message):
        read_questions(path)


def test_read_questions_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_questions(tmp_path / "none.jsonl")


def test_calibrate_command(tmp_path, tiny_model_dir, tofu_dir, capsys) -> None:
    output = tmp_path / "threshold.json"

    main(
        [
            "calibrate",
            "--lm.name_or_path", str(tiny_model_dir),
            "--data_dir", str(tofu_dir),
            "--retain_authors", "1",
            "--score.kind", "generated",
            "--score.k", "2",
            "--alpha", "0.05",
            "--output", str(output),
            "--evaluate", "false",
        ]
    )  # fmt: skip

    threshold = Threshold.load(output)
    assert threshold.n == 20  # the paraphrased questions of the first retain author
    assert threshold.score == ScoreDefinition(kind="generated", k=2)
    assert threshold.calibration_summary["min"] <= threshold.threshold <= threshold.calibration_summary["max"]
    assert "saved to" in capsys.readouterr().out


def test_calibrate_too_few_questions(tmp_path, tiny_model_dir, tofu_dir) -> None:
    with pytest.raises(CalibrationError, match="needs at least 99"):
        main(
            [
                "calibrate",
                "--lm.name_or_path", str(tiny_model_dir),
                "--data_dir", str(tofu_dir),
                "--retain_authors", "1",
                "--alpha", "0.01",
                "--output", str(tmp_path / "threshold.json"),
            ]
        )  # fmt: skip
