"""TOFU aggregates from per-item scores: probability, ROUGE-L, truth ratio, forget quality, utility, energy AUROC.

The evaluation sets are forget, retain, real_authors and world_facts. Forget quality needs the
per-item forget truth ratios of a retain model, read from that model's results file; without one
it is reported as missing (``None``), never estimated.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from eua.metrics import functional as M

log = logging.getLogger(__name__)

UTILITY_SETS = ("retain", "real_authors", "world_facts")
HEADLINE = (
    ("forget ROUGE-L", "forget/rouge_l_recall"),
    ("forget prob", "forget/probability"),
    ("forget TR", "forget/truth_ratio"),
    ("forget quality", "forget_quality"),
    ("model utility", "model_utility"),
    ("retain ROUGE-L", "retain/rouge_l_recall"),
    ("energy AUROC", "energy_auroc"),
)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def set_aggregates(name: str, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Aggregate the per-item scores of one evaluation set."""
    aggregator = "closer_to_1_better" if name == "forget" else "true_better"
    result = {
        "probability": _nanmean(M.answer_probability(scores["answer_nll"])),
        "rouge_l_recall": _nanmean(scores["rouge_l_recall"]),
        "energy_answer": _nanmean(scores["energy_answer"]),
        "energy_prompt": _nanmean(scores["energy_prompt"]),
    }
    if np.all(np.isfinite(scores["perturbed_nll"])):
        result["truth_ratio"] = M.truth_ratio(scores["correct_nll"], scores["perturbed_nll"], aggregator)
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


def aggregate(
    per_set: dict[str, dict[str, np.ndarray]], retain_truth_ratios: list[float] | None
) -> dict[str, Any]:
    """Build the flat ``{"<set>/<metric>": value}`` aggregates plus the cross-set numbers."""
    flat: dict[str, Any] = {}
    by_set = {name: set_aggregates(name, scores) for name, scores in per_set.items()}
    for name, values in by_set.items():
        for metric, value in values.items():
            flat[f"{name}/{metric}"] = value

    if all(name in by_set for name in UTILITY_SETS):
        utility_inputs = [
            by_set["retain"]["probability"],
            by_set["retain"]["rouge_l_recall"],
            by_set["retain"].get("truth_ratio", float("nan")),
        ]
        for name in ("real_authors", "world_facts"):
            utility_inputs += [
                by_set[name]["normalized_probability"],
                by_set[name]["rouge_l_recall"],
                by_set[name].get("truth_ratio", float("nan")),
            ]
        flat["model_utility"] = M.model_utility(utility_inputs)

    if "forget" in per_set:
        forget_ratios = M.truth_ratios(per_set["forget"]["correct_nll"], per_set["forget"]["perturbed_nll"])
        if retain_truth_ratios is None:
            flat["forget_quality"] = None
        else:
            flat["forget_quality"] = M.forget_quality(forget_ratios, retain_truth_ratios)

    if "forget" in per_set and "retain" in per_set:
        for energy in ("answer", "prompt"):
            suffix = "" if energy == "answer" else "_prompt"
            flat[f"energy_auroc{suffix}"] = M.energy_auroc(
                per_set["forget"][f"energy_{energy}"], per_set["retain"][f"energy_{energy}"]
            )
    return flat


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Render ``{run name: aggregates}`` as a Markdown table of the headline metrics."""
    header = "| model | " + " | ".join(label for label, _ in HEADLINE) + " |"
    lines = [header, "|" + "---|" * (len(HEADLINE) + 1)]
    for run, values in rows.items():
        cells = []
        for _, key in HEADLINE:
            value = values.get(key)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                cells.append("n/a")
            elif key == "forget_quality":
                cells.append(f"{value:.3g}")
            else:
                cells.append(f"{value:.3f}")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
