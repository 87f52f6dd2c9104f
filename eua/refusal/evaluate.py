"""Refusal evaluation of a guarded model on the TOFU question sets.

For each set the guard answers every question once. The report holds, per set, the refusal rate
(on ``forget`` and ``forget_paraphrased`` the share to refuse, elsewhere the false-refusal rate),
the mean query energy, and on the forget set the ROUGE-L recall of the guarded answers (a refusal
counts as its text) beside that of the unguarded answers. It also gives the energy AUROC of forget
against retained queries for several score definitions, all computed from the same generations.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from eua.data.datamodule import TOFUDataModule
from eua.data.tofu import load_split, split_percentage
from eua.metrics.functional import energy_auroc
from eua.refusal.guard import RefusalGuard
from eua.refusal.metrics import GuardedRougeL, RefusalRate
from eua.refusal.scoring import ScoreDefinition, query_energy

FORGET_SETS = ("forget", "forget_paraphrased")
# Score definitions whose AUROC the report compares, besides the threshold's own.
AUROC_DEFINITIONS = (("prompt", 1), ("generated", 1), ("generated", 4), ("generated", 8), ("generated", 16))


@dataclass
class QuestionSet:
    """Questions of one evaluation set and their reference answers."""

    questions: list[str]
    answers: list[str]


def tofu_question_sets(
    data_dir: str | None,
    forget_split: str,
    retain_authors: int | None,
    calibration_set: str,
    calibration_fraction: float = 0.5,
    seed: int = 0,
    eval_limit: int | None = None,
) -> tuple[list[str], dict[str, QuestionSet]]:
    """Return the calibration questions and the evaluation sets for one TOFU configuration.

    ``calibration_set`` chooses the calibration questions among the retained rows that the target
    model was trained on (``retain_perturbed`` within the retain subset):

    - ``retain_paraphrased``: their paraphrased questions. The evaluation ``retain`` set keeps
      the original questions of the same rows.
    - ``retain_split``: the original questions of a seeded ``calibration_fraction`` of the rows.
      The evaluation ``retain`` set is the other rows, so the two sets are disjoint and
      exchangeable, as the split-conformal guarantee assumes.

    ``eval_limit`` keeps the first N questions of each evaluation set (for quick checks); the
    calibration questions are never cut.
    """
    if eval_limit is not None and eval_limit < 1:
        raise ValueError(f"eval_limit must be at least 1 or null, got {eval_limit}")
    data = TOFUDataModule(data_dir=data_dir, forget_split=forget_split, retain_authors=retain_authors)
    retain = data.eval_rows("retain")
    forget = data.eval_rows("forget")

    if calibration_set == "retain_paraphrased":
        calibration = [row["paraphrased_question"] for row in retain]
        retain_eval = retain
    elif calibration_set == "retain_split":
        if not 0 < calibration_fraction < 1:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
        order = list(range(len(retain)))
        random.Random(seed).shuffle(order)
        cut = round(calibration_fraction * len(retain))
        calibration = [retain[index]["question"] for index in sorted(order[:cut])]
        retain_eval = [retain[index] for index in sorted(order[cut:])]
    else:
        raise ValueError(f"calibration_set must be 'retain_paraphrased' or 'retain_split', got {calibration_set!r}")

    holdout = load_split(f"holdout{split_percentage(forget_split):02d}", data_dir)
    sets = {
        "forget": QuestionSet([row["question"] for row in forget], [row["answer"] for row in forget]),
        "forget_paraphrased": QuestionSet(
            [row["paraphrased_question"] for row in forget], [row["answer"] for row in forget]
        ),
        "retain": QuestionSet([row["question"] for row in retain_eval], [row["answer"] for row in retain_eval]),
        "real_authors": _plain_set(data.eval_rows("real_authors")),
        "world_facts": _plain_set(data.eval_rows("world_facts")),
        "holdout": _plain_set(holdout),
    }
    if eval_limit is not None:
        sets = {name: QuestionSet(qs.questions[:eval_limit], qs.answers[:eval_limit]) for name, qs in sets.items()}
    return calibration, sets


def _plain_set(rows: Sequence[dict[str, Any]]) -> QuestionSet:
    return QuestionSet([row["question"] for row in rows], [row["answer"] for row in rows])


def evaluate_guard(guard: RefusalGuard, sets: dict[str, QuestionSet]) -> dict[str, Any]:
    """Answer every set with ``guard`` and return the refusal report (plain floats)."""
    report: dict[str, Any] = {"sets": {}, "auroc": {}}
    step_scores: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    for name, question_set in sets.items():
        rate = RefusalRate()
        guarded_rouge, model_rouge = GuardedRougeL(), GuardedRougeL()
        energies = []
        step_scores[name] = []
        for start in range(0, len(question_set.questions), guard.batch_size):
            questions = question_set.questions[start : start + guard.batch_size]
            references = question_set.answers[start : start + guard.batch_size]
            output = guard.generate_batch(questions)
            rate.update(output.refused)
            guarded_rouge.update(output.answers, references)
            model_rouge.update(output.model_answers, references)
            energies.append(output.energies)
            step_scores[name].append(output.steps)

        entry = {
            "n": len(question_set.questions),
            "refusal_rate": float(rate.compute()),
            "mean_energy": float(torch.cat(energies).mean()),
        }
        if name in FORGET_SETS:
            entry["rouge_l_guarded"] = float(guarded_rouge.compute())
            entry["rouge_l_unguarded"] = float(model_rouge.compute())
        report["sets"][name] = entry

    definitions = [guard.threshold.score] + [
        replace(guard.threshold.score, kind=kind, k=k) for kind, k in AUROC_DEFINITIONS
    ]
    for definition in definitions:
        label = _label(definition)
        if label in report["auroc"]:
            continue
        forget = _energies(step_scores["forget"], definition)
        retain = _energies(step_scores["retain"], definition)
        report["auroc"][label] = energy_auroc(forget, retain)
    return report


def _label(definition: ScoreDefinition) -> str:
    return "prompt" if definition.kind == "prompt" else f"generated_k{definition.k}"


def _energies(steps: list[tuple[torch.Tensor, torch.Tensor]], definition: ScoreDefinition) -> torch.Tensor:
    return torch.cat([query_energy(energy, mask, definition) for energy, mask in steps])


def format_report(report: dict[str, Any]) -> str:
    """Render the report as a Markdown table."""
    lines = [
        "| set | n | refused | mean energy | ROUGE-L guarded | ROUGE-L unguarded |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, entry in report["sets"].items():
        guarded = entry.get("rouge_l_guarded")
        unguarded = entry.get("rouge_l_unguarded")
        lines.append(
            f"| {name} | {entry['n']} | {entry['refusal_rate']:.3f} | {entry['mean_energy']:.3f} | "
            f"{'' if guarded is None else f'{guarded:.3f}'} | {'' if unguarded is None else f'{unguarded:.3f}'} |"
        )
    lines.append("")
    lines.append("Energy AUROC, forget against retain: " + ", ".join(f"{k} {v:.3f}" for k, v in report["auroc"].items()))
    return "\n".join(lines)
