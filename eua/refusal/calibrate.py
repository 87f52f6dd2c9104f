"""``eua calibrate``: fit the refusal threshold of a model on retained questions and evaluate the guard.

The command loads the model and scores the calibration questions (see
:func:`eua.refusal.evaluate.tofu_question_sets`). It takes the empirical or split-conformal quantile
and saves the threshold with the model fingerprint, by default to
``<model folder>/refusal_threshold.json``. Unless ``evaluate`` is off, it then runs the guard on the
TOFU question sets, writes the refusal report (``refusal_report.json`` beside the threshold) and
prints it as a table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import auto_cli

from eua.evaluation.results import write_json_atomic
from eua.models.loading import ModelSpec, load_model, load_tokenizer
from eua.refusal.calibration import (
    CalibrationError,
    Method,
    Threshold,
    min_calibration_size,
    model_fingerprint,
    threshold_from_scores,
)
from eua.refusal.evaluate import evaluate_guard, format_report, tofu_question_sets
from eua.refusal.guard import RefusalGuard, load_refusals
from eua.refusal.scoring import ScoreDefinition, score_questions

log = logging.getLogger(__name__)

THRESHOLD_FILE = "refusal_threshold.json"
REPORT_FILE = "refusal_report.json"


def run_calibration(
    lm: ModelSpec,
    data_dir: str | None = None,
    forget_split: str = "forget01",
    retain_authors: int | None = None,
    calibration_set: Literal["retain_paraphrased", "retain_split"] = "retain_paraphrased",
    calibration_fraction: float = 0.5,
    score: ScoreDefinition = ScoreDefinition(),  # noqa: B008 - frozen dataclass
    alpha: float = 0.05,
    method: Method = "conformal",
    output: str | None = None,
    evaluate: bool = True,
    report: str | None = None,
    refusals: str = "idontknow",
    refusal_template: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    eval_limit: int | None = None,
) -> dict[str, Any]:
    """Fit, save and evaluate a refusal threshold; return ``{"threshold": ..., "report": ...}``.

    Args:
        lm: the model to calibrate (normally an unlearned model's folder).
        data_dir: TOFU folder of ``<split>.jsonl`` files.
        forget_split: the forget split the model unlearned.
        retain_authors: the retain subset the model was trained on (first N authors).
        calibration_set: ``retain_paraphrased`` (paraphrased retained questions) or
            ``retain_split`` (a seeded part of the retained questions, the rest is evaluated).
        calibration_fraction: share of retained rows used for calibration by ``retain_split``.
        score: how a query's energy is computed.
        alpha: target false-refusal rate on retained questions.
        method: ``conformal`` (split-conformal guarantee) or ``empirical`` quantile.
        output: threshold file; unset writes ``refusal_threshold.json`` in the model folder.
        evaluate: also run the guard on the TOFU question sets and write the refusal report.
        report: report file; unset writes ``refusal_report.json`` beside the threshold.
        refusals: ``idontknow`` (the TOFU split) or a JSON Lines file of ``{"text": ...}`` rows.
        refusal_template: refusal text with an optional ``{question}`` field, instead of ``refusals``.
        max_new_tokens: answer length of the evaluation.
        batch_size: questions per ``generate`` call.
        seed: seed of the ``retain_split`` partition.
        eval_limit: evaluate only the first N questions of each set (the calibration set is whole).
    """
    torch.manual_seed(seed)
    spec = lm if lm.data_dir is not None else ModelSpec(**{**vars(lm), "data_dir": data_dir})
    tokenizer = load_tokenizer(spec)
    model = load_model(spec).eval()

    calibration, sets = tofu_question_sets(
        data_dir, forget_split, retain_authors, calibration_set, calibration_fraction, seed, eval_limit
    )
    if method == "conformal" and len(calibration) < min_calibration_size(alpha):
        raise CalibrationError(
            f"{len(calibration)} calibration questions are too few for alpha={alpha}: the conformal "
            f"threshold needs at least {min_calibration_size(alpha)}; raise retain_authors or alpha"
        )

    log.info("Scoring %d calibration questions (%s) with the %s", len(calibration), calibration_set, score.describe())
    scores = score_questions(model, tokenizer, calibration, score, batch_size)
    threshold = Threshold(
        threshold=threshold_from_scores(scores, alpha, method),
        alpha=alpha,
        method=method,
        n=len(scores),
        score=score,
        fingerprint=model_fingerprint(model, tokenizer),
        model=spec.name_or_path,
        calibration_set=f"{calibration_set} ({forget_split}, retain_authors={retain_authors})",
        calibration_summary={
            "min": float(scores.min()),
            "median": float(scores.median()),
            "max": float(scores.max()),
        },
    )
    threshold_path = Path(output) if output else _model_folder(spec) / THRESHOLD_FILE
    threshold.save(threshold_path)
    print(f"Threshold {threshold.threshold:.4f} ({method}, alpha={alpha}, n={threshold.n}) saved to {threshold_path}")

    result: dict[str, Any] = {"threshold": threshold.to_dict(), "report": None}
    if not evaluate:
        return result

    refusal_texts = None if refusal_template is not None else load_refusals(refusals, data_dir)
    guard = RefusalGuard(
        model,
        tokenizer,
        threshold,
        refusals=refusal_texts,
        template=refusal_template,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        verify=False,
    )
    result["report"] = {"threshold": threshold.to_dict(), **evaluate_guard(guard, sets)}
    report_path = Path(report) if report else threshold_path.with_name(REPORT_FILE)
    write_json_atomic(report_path, result["report"], overwrite=True)
    print(format_report(result["report"]))
    print(f"Report saved to {report_path}")
    return result


def _model_folder(spec: ModelSpec) -> Path:
    path = Path(spec.name_or_path)
    if path.is_dir():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return path.parent
    raise CalibrationError(
        f"model {spec.name_or_path!r} is not a local folder, so there is no checkpoint folder to "
        f"save the threshold beside; pass --output PATH"
    )


def calibrate_main(arguments: list[str]) -> None:
    auto_cli(run_calibration, args=arguments)
