"""TOFU aggregates from per-item scores: probability, ROUGE, truth ratio, forget quality, model utility,
memorization, membership inference and energy separation.

The evaluation sets are forget, retain, real_authors, world_facts and holdout. Forget quality and
privleak compare against a retain model's results file (``RetainReference``); without one they are
reported as missing (``None``), never estimated. Missing per-item values (NaN) are left out of
every mean, as open-unlearning leaves out ``None`` items.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eua.metrics import functional as M
from eua.metrics.mia import MIA_ATTACKS

log = logging.getLogger(__name__)

UTILITY_SETS = ("retain", "real_authors", "world_facts")
ROUGE_FIELDS = {"rouge_l_recall": "rouge_l_recall", "rouge1_recall": "rouge1_recall", "rouge_l_f1": "rouge_l_f1"}
ENERGY_SCORES = {"auroc": M.energy_auroc, "aupr": M.energy_aupr, "fpr95": M.energy_fpr_at_tpr}
HEADLINE = (
    ("forget ROUGE-L", "forget/rouge_l_recall"),
    ("forget prob", "forget/probability"),
    ("forget TR", "forget/truth_ratio"),
    ("forget quality", "forget_quality"),
    ("model utility", "model_utility"),
    ("retain ROUGE-L", "retain/rouge_l_recall"),
    ("privleak", "privleak"),
    ("energy AUROC", "energy_auroc"),
)
# Shown when a row has them: refusal rates of the calibrated energy guard (``eua calibrate``).
REFUSAL_COLUMNS = (
    ("forget refused", "refusal/forget"),
    ("paraphrased forget refused", "refusal/forget_paraphrased"),
    ("retain false refusal", "refusal/retain"),
)


@dataclass
class RetainReference:
    """Retain-model values that forget quality and privleak compare against."""

    truth_ratios: list[float] | None = None
    mia_auc: dict[str, float] = field(default_factory=dict)


def _has_values(values: np.ndarray) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).any())


def set_aggregates(name: str, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Aggregate the per-item scores of one evaluation set."""
    result = {
        "probability": M.nanmean(M.answer_probability(scores["answer_nll"])),
        "energy_answer": M.nanmean(scores["energy_answer"]),
        "energy_prompt": M.nanmean(scores["energy_prompt"]),
        "extraction_strength": M.nanmean(scores["extraction_strength"]),
        "exact_memorization": M.nanmean(scores["exact_memorization"]),
    }
    for metric, column in ROUGE_FIELDS.items():
        if _has_values(scores[column]):
            result[metric] = M.nanmean(scores[column])

    if _has_values(scores["perturbed_nll"]):
        result["paraphrase_probability"] = M.nanmean(M.answer_probability(scores["correct_nll"]))
        result["perturbed_probability"] = M.nanmean(scores["perturbed_prob_mean"])
        ratios = M.truth_ratios(scores["correct_nll"], scores["perturbed_nll"])
        aggregator = "closer_to_1_better" if name == "forget" else "true_better"
        result["truth_ratio"] = M.aggregate_truth_ratios(ratios, aggregator)
        if name == "forget":
            result["truth_ratio_prob_mean"] = M.aggregate_truth_ratios(ratios, "prob_mean")
    if name in ("real_authors", "world_facts"):
        result["normalized_probability"] = M.normalized_probability(
            M.answer_probability(scores["answer_nll"]), scores["perturbed_prob_sum"]
        )
    return result


def per_item_table(scores: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Per-item values written to the results file, including each item's raw truth ratio."""
    table = {name: np.asarray(values).tolist() for name, values in scores.items()}
    if "perturbed_nll" in scores:
        table["truth_ratio"] = M.truth_ratios(scores["correct_nll"], scores["perturbed_nll"]).tolist()
    table["probability"] = M.answer_probability(scores["answer_nll"]).tolist()
    return table


def _model_utility(by_set: dict[str, dict[str, float]]) -> float:
    """Harmonic mean of retain probability, ROUGE-L recall, truth ratio and the same three numbers
    (normalised probability instead of probability) on real authors and world facts."""
    nan = float("nan")
    inputs = [by_set["retain"]["probability"], by_set["retain"].get("rouge_l_recall", nan), by_set["retain"].get("truth_ratio", nan)]
    for name in ("real_authors", "world_facts"):
        inputs += [
            by_set[name]["normalized_probability"],
            by_set[name].get("rouge_l_recall", nan),
            by_set[name].get("truth_ratio", nan),
        ]
    return M.model_utility(inputs)


def _optional(value: float) -> float | None:
    return None if not np.isfinite(value) else value


def aggregate(per_set: dict[str, dict[str, np.ndarray]], retain: RetainReference | None) -> dict[str, Any]:
    """Build the flat ``{"<set>/<metric>": value}`` aggregates plus the cross-set numbers."""
    retain = retain or RetainReference()
    flat: dict[str, Any] = {}
    by_set = {name: set_aggregates(name, scores) for name, scores in per_set.items()}
    for name, values in by_set.items():
        for metric, value in values.items():
            flat[f"{name}/{metric}"] = value

    if all(name in by_set for name in UTILITY_SETS):
        flat["model_utility"] = _model_utility(by_set)

    if "forget" in per_set:
        forget = per_set["forget"]
        if retain.truth_ratios is None:
            flat["forget_quality"] = None
        else:
            ratios = M.truth_ratios(forget["correct_nll"], forget["perturbed_nll"])
            flat["forget_quality"] = _optional(M.forget_quality(ratios, retain.truth_ratios))

    if "forget" in per_set and "holdout" in per_set:
        for attack in MIA_ATTACKS:
            auc = M.mia_auc(per_set["forget"][f"mia_{attack}"], per_set["holdout"][f"mia_{attack}"])
            flat[f"mia_{attack}"] = auc
            retain_auc = retain.mia_auc.get(f"mia_{attack}")
            suffix = "" if attack == "min_k" else f"_{attack}"
            flat[f"privleak{suffix}"] = None if retain_auc is None else _optional(M.privleak(auc, retain_auc))

    for other in ("retain", "holdout"):
        if "forget" not in per_set or other not in per_set:
            continue
        for energy in ("answer", "prompt"):
            for score, function in ENERGY_SCORES.items():
                key = f"energy_{score}"
                if energy == "prompt":
                    key += "_prompt"
                if other == "holdout":
                    key += "_holdout"
                flat[key] = function(per_set["forget"][f"energy_{energy}"], per_set[other][f"energy_{energy}"])
    return flat


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Render ``{run name: aggregates}`` as a Markdown table of the headline metrics."""
    columns = HEADLINE
    if any(key in values for values in rows.values() for _, key in REFUSAL_COLUMNS):
        columns += REFUSAL_COLUMNS
    header = "| model | " + " | ".join(label for label, _ in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for run, values in rows.items():
        cells = []
        for _, key in columns:
            value = values.get(key)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                cells.append("n/a")
            elif key == "forget_quality":
                cells.append(f"{value:.3g}")
            elif key == "privleak":
                cells.append(f"{value:.1f}")
            else:
                cells.append(f"{value:.3f}")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
