"""Results files: one JSON document per evaluation run, written atomically, in one of two layouts.

The default ("eua") layout::

    {"meta": {...}, "aggregate": {"forget/probability": ..., "forget_quality": ..., ...},
     "per_item": {"forget": {"index": [...], "truth_ratio": [...], ...}, ...}}

The "open-unlearning" layout is that of open-unlearning's ``TOFU_EVAL.json``:
``{metric_name: {"agg_value": ..., "value_by_index": {"0": {...}, ...}}}`` with its metric names
(``forget_truth_ratio``, ``retain_Q_A_Prob``, ``mia_min_k``, ...). ``read_results`` accepts
both and returns the eua layout, so a retain log from either tool gives forget quality.

A file is written to a temporary name in the same folder and renamed, so a crash never leaves half
a file, and an existing file is replaced only when the caller allows it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from eua.evaluation.tofu import RetainReference
from eua.metrics.mia import MIA_ATTACKS

log = logging.getLogger(__name__)

ResultsLayout = Literal["eua", "open-unlearning"]
RESULTS_LAYOUTS: tuple[str, ...] = ("eua", "open-unlearning")


class ResultsError(ValueError):
    """A results file that is missing, unreadable or lacks what is needed."""


def _clean(value: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    return value


def write_json_atomic(path: str | os.PathLike[str], document: Any, overwrite: bool = False) -> Path:
    """Write ``document`` as JSON to ``path`` through a temporary file and a rename."""
    text = json.dumps(_clean(document), indent=1, allow_nan=False) + "\n"
    return write_text_atomic(path, text, overwrite=overwrite)


def write_text_atomic(path: str | os.PathLike[str], text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a crash leaves the old file."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (or --model.overwrite_results true) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def read_json_file(source: Path, error: type[Exception] = ValueError) -> Any:
    """Parse a JSON file; invalid JSON raises ``error`` with the file and line in its message."""
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as decode_error:
        raise error(f"{source}:{decode_error.lineno}: invalid JSON ({decode_error.msg})") from decode_error


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a results file in either layout and return it in the eua layout."""
    source = Path(path)
    if not source.is_file():
        raise ResultsError(f"results file {source} not found; run `eua test` on that model first")
    document = read_json_file(source, ResultsError)
    if not isinstance(document, dict):
        raise ResultsError(f"{source}: expected a JSON object at the top level, got {type(document).__name__}")
    if "aggregate" in document:
        return document
    if any(isinstance(value, dict) and "agg_value" in value for value in document.values()):
        return from_open_unlearning(document, source)
    raise ResultsError(
        f"{source}: neither an eua results file (no 'aggregate' key) nor an open-unlearning "
        f"TOFU_EVAL.json (no metric with an 'agg_value')"
    )


def read_retain_reference(path: str | os.PathLike[str]) -> RetainReference:
    """Per-item forget truth ratios and attack AUCs of a retain model's results, in either layout."""
    document = read_results(path)
    try:
        ratios = document["per_item"]["forget"]["truth_ratio"]
    except (KeyError, TypeError) as error:
        raise ResultsError(
            f"{path} has no per-item forget truth ratios (eua: per_item.forget.truth_ratio; "
            f"open-unlearning: forget_truth_ratio.value_by_index); evaluate the retain model on the forget set first"
        ) from error
    aggregates = document.get("aggregate", {})
    auc = {
        f"mia_{attack}": float(aggregates[f"mia_{attack}"])
        for attack in MIA_ATTACKS
        if isinstance(aggregates.get(f"mia_{attack}"), (int, float))
    }
    return RetainReference(truth_ratios=[float(value) for value in ratios if value is not None], mia_auc=auc)


def forget_truth_ratios(path: str | os.PathLike[str]) -> list[float]:
    """Per-item forget truth ratios ``P(wrong) / P(correct)`` of a results file in either layout."""
    ratios = read_retain_reference(path).truth_ratios
    return list(ratios or [])


# ---------------------------------------------------------------------------- open-unlearning layout

# Our set names and open-unlearning's metric-name prefixes.
OU_PREFIX = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
OU_TRUTH_RATIO = {"forget": "forget_truth_ratio", "retain": "retain_Truth_Ratio", "real_authors": "ra_Truth_Ratio", "world_facts": "wf_Truth_Ratio"}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _floats(values: list[Any]) -> np.ndarray:
    """Array of a per-item list read from JSON, where missing values are ``None``."""
    return np.array([math.nan if value is None else value for value in values], dtype=np.float64)


def _by_index(index: list[int], **columns: list[float]) -> dict[str, dict[str, float | None]]:
    return {str(int(i)): {name: _number(values[row]) for name, values in columns.items()} for row, i in enumerate(index)}


def _entry(agg_value: Any, index: list[int] | None = None, **columns: list[float]) -> dict[str, Any]:
    entry: dict[str, Any] = {"agg_value": _number(agg_value) if not isinstance(agg_value, dict) else agg_value}
    if index is not None:
        entry["value_by_index"] = _by_index(index, **columns)
    return entry


def to_open_unlearning(document: dict[str, Any]) -> dict[str, Any]:
    """Convert an eua results document to open-unlearning's ``TOFU_EVAL.json`` layout.

    The forget truth ratio is written as open-unlearning computes it today (aggregator
    ``prob_mean``, per-item score ``P(correct) / (P(correct) + P(wrong))``); the other sets keep
    the ratio ``P(wrong) / P(correct)``. Each truth-ratio entry also names its ``aggregator``.
    Perturbed-answer probabilities are per item (the mean over the answers), not lists.
    """
    aggregates = document["aggregate"]
    per_item = document["per_item"]
    out: dict[str, Any] = {}

    for name, prefix in OU_PREFIX.items():
        items = per_item.get(name)
        if not items:
            continue
        index = items["index"]
        nll = items["answer_nll"]
        out[f"{prefix}_Q_A_Prob"] = _entry(aggregates.get(f"{name}/probability"), index, prob=items["probability"], avg_loss=nll)
        if f"{name}/rouge_l_recall" in aggregates:
            out[f"{prefix}_Q_A_ROUGE"] = _entry(
                aggregates[f"{name}/rouge_l_recall"], index,
                rouge1_recall=items["rouge1_recall"], rougeL_f1=items["rouge_l_f1"], rougeL_recall=items["rouge_l_recall"],
            )
        if f"{name}/truth_ratio" not in aggregates:
            continue
        out[f"{prefix}_Q_A_PERT_Prob"] = _entry(
            aggregates.get(f"{name}/perturbed_probability"), index,
            prob=items["perturbed_prob_mean"], avg_loss=items["perturbed_nll"],
        )
        if name in ("forget", "retain"):
            correct = np.exp(-_floats(items["correct_nll"])).tolist()
            out[f"{prefix}_Q_A_PARA_Prob"] = _entry(
                aggregates.get(f"{name}/paraphrase_probability"), index, prob=correct, avg_loss=items["correct_nll"]
            )
        else:
            probability = _floats(items["probability"])
            normalized = (probability / (probability + _floats(items["perturbed_prob_sum"]))).tolist()
            out[f"{prefix}_Q_A_Prob_normalised"] = _entry(aggregates.get(f"{name}/normalized_probability"), index, prob=normalized)

        ratios = _floats(items["truth_ratio"])
        if name == "forget":
            entry = _entry(aggregates.get("forget/truth_ratio_prob_mean"), index, score=(1.0 / (1.0 + ratios)).tolist())
            entry["aggregator"] = "prob_mean"
        else:
            entry = _entry(aggregates.get(f"{name}/truth_ratio"), index, score=ratios.tolist())
            entry["aggregator"] = "true_better"
        out[OU_TRUTH_RATIO[name]] = entry

    forget = per_item.get("forget")
    if forget:
        for metric in ("extraction_strength", "exact_memorization"):
            out[metric] = _entry(aggregates.get(f"forget/{metric}"), forget["index"], score=forget[metric])

    holdout = per_item.get("holdout")
    for attack in MIA_ATTACKS:
        key = f"mia_{attack}"
        if key not in aggregates or not forget or not holdout:
            continue
        sides = {}
        for side, items in (("forget", forget), ("holdout", holdout)):
            finite = [value for value in items[key] if value is not None and math.isfinite(value)]
            sides[side] = _entry(float(np.mean(finite)) if finite else None, items["index"], score=items[key])
        out[key] = {**sides, "auc": _number(aggregates[key]), "agg_value": _number(aggregates[key])}

    for key in ("model_utility", "forget_quality", "privleak"):
        if key in aggregates:
            out[key] = {"agg_value": _number(aggregates[key])}
    for key, value in aggregates.items():
        if key.startswith(("energy_", "privleak_")):
            out[key] = {"agg_value": _number(value)}
    return out


def _forget_truth_ratios_from(entry: dict[str, Any], source: Path) -> tuple[list[int], list[float]]:
    """Per-item ``P(wrong) / P(correct)`` from an open-unlearning ``forget_truth_ratio`` entry.

    Open-unlearning's older releases store ``r = P(wrong) / P(correct)`` with the
    ``closer_to_1_better`` aggregate; newer ones store ``s = 1 / (1 + r)`` with the ``prob_mean``
    aggregate. The ``aggregator`` key decides when present. Otherwise a score above 1 means ``r``,
    and so does an aggregate that differs from the mean of the scores.
    """
    value_by_index = entry.get("value_by_index")
    if not isinstance(value_by_index, dict) or not value_by_index:
        raise ResultsError(f"{source}: forget_truth_ratio has no value_by_index; it needs the per-item scores")
    index, scores = [], []
    for key, value in value_by_index.items():
        score = value.get("score") if isinstance(value, dict) else None
        if score is None:
            continue
        index.append(int(key))
        scores.append(float(score))
    array = np.asarray(scores, dtype=np.float64)

    aggregator = entry.get("aggregator")
    if aggregator is None:
        agg = entry.get("agg_value")
        if np.any(array > 1):
            aggregator = "closer_to_1_better"
        elif agg is not None and not math.isclose(float(np.mean(array)), float(agg), rel_tol=1e-6):
            aggregator = "closer_to_1_better"
        else:
            # NOTE: with every score <= 1 and the aggregate equal to their mean, both conventions fit.
            log.warning(
                "%s: forget_truth_ratio does not say its aggregator and fits both conventions; reading its "
                "scores as P(correct) / (P(correct) + P(wrong)), as current open-unlearning writes them",
                source,
            )
            aggregator = "prob_mean"
    if aggregator == "prob_mean":
        with np.errstate(divide="ignore"):
            array = 1.0 / array - 1.0
    return index, array.tolist()


def from_open_unlearning(document: dict[str, Any], source: Path | str = "<document>") -> dict[str, Any]:
    """Convert an open-unlearning ``TOFU_EVAL.json`` document to the eua layout (aggregates, forget truth ratios)."""
    source = Path(source)
    aggregates: dict[str, Any] = {}
    reverse = {prefix: name for name, prefix in OU_PREFIX.items()}
    for key, entry in document.items():
        if not isinstance(entry, dict) or "agg_value" not in entry:
            continue
        value = entry["agg_value"]
        prefix, _, rest = key.partition("_")
        if key == "forget_truth_ratio":
            aggregates["forget/truth_ratio_open_unlearning"] = value
        elif prefix in reverse and rest == "Q_A_Prob":
            aggregates[f"{reverse[prefix]}/probability"] = value
        elif prefix in reverse and rest == "Q_A_ROUGE":
            aggregates[f"{reverse[prefix]}/rouge_l_recall"] = value
        elif prefix in reverse and rest == "Truth_Ratio":
            aggregates[f"{reverse[prefix]}/truth_ratio"] = value
        elif prefix in reverse and rest == "Q_A_Prob_normalised":
            aggregates[f"{reverse[prefix]}/normalized_probability"] = value
        elif key in ("extraction_strength", "exact_memorization"):
            aggregates[f"forget/{key}"] = value
        else:
            aggregates[key] = value

    per_item: dict[str, Any] = {}
    entry = document.get("forget_truth_ratio") or document.get("forget_Truth_Ratio")
    if isinstance(entry, dict):
        index, ratios = _forget_truth_ratios_from(entry, source)
        per_item["forget"] = {"index": index, "truth_ratio": ratios}
    return {"meta": {"layout": "open-unlearning", "source": str(source)}, "aggregate": aggregates, "per_item": per_item}


def write_results(
    path: str | os.PathLike[str], document: dict[str, Any], layout: ResultsLayout = "eua", overwrite: bool = False
) -> Path:
    """Write an eua results document in ``layout`` (``eua`` or ``open-unlearning``)."""
    if layout not in RESULTS_LAYOUTS:
        raise ValueError(f"unknown results layout {layout!r}; choose from {RESULTS_LAYOUTS}")
    payload = document if layout == "eua" else to_open_unlearning(document)
    return write_json_atomic(path, payload, overwrite=overwrite)
