"""Forget-set scores of a model under attack, with the existing TOFU scoring and aggregation.

Every attack ends in the same evaluation: score a list of forget rows (perhaps rephrased, perhaps a
subset) and the retain rows with :func:`eua.evaluation.scoring.score_batch`, then aggregate with
:func:`eua.evaluation.tofu.aggregate`. Forget quality compares the forget truth ratios with the
retain model's ratios on the same items (matched by row index in ``forgetNN_perturbed``).

The refusal rate counts a query as refused when its energy at the last prompt token exceeds the
threshold: ``refused = E(z_prompt) > threshold``, where high energy means low confidence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eua.data.datamodule import EVAL_SETS
from eua.data.datasets import EvalCollator, EvalDataset
from eua.energy import EnergyHead
from eua.evaluation.results import ResultsError, read_json_file, read_results
from eua.evaluation.scoring import score_batch
from eua.evaluation.tofu import RetainReference, aggregate

log = logging.getLogger(__name__)


@dataclass
class Scorer:
    """Per-item scoring settings of one attack run: tokenizer, energy head, lengths and batch size."""

    tokenizer: PreTrainedTokenizerBase
    energy_head: EnergyHead
    max_length: int
    batch_size: int
    max_new_tokens: int

    @torch.no_grad()
    def score(
        self, model: PreTrainedModel, rows: Sequence[dict[str, Any]], correct_field: str, generate: bool
    ) -> dict[str, np.ndarray]:
        """Return ``{score field: array of one value per row}`` in row order."""
        was_training = model.training
        model.eval()
        dataset = EvalDataset(rows, self.tokenizer, self.max_length, correct_field=correct_field)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=EvalCollator(pad))
        device = next(model.parameters()).device

        parts: dict[str, list[np.ndarray]] = {}
        for batch in loader:
            batch = _to_device(batch, device)
            scores = score_batch(model, self.tokenizer, self.energy_head, batch, self.max_new_tokens, generate=generate)
            for name, value in scores.items():
                parts.setdefault(name, []).append(value.cpu().numpy())
        model.train(was_training)
        return {name: np.concatenate(values) for name, values in parts.items()}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    moved: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device)
        elif isinstance(value, dict):
            moved[key] = {name: tensor.to(device) for name, tensor in value.items()}
        else:
            moved[key] = value
    return moved


def read_threshold(threshold: float | str | None) -> float | None:
    """Return the refusal threshold from a number or a JSON file with a ``"threshold"`` key."""
    if threshold is None or isinstance(threshold, (int, float)):
        return None if threshold is None else float(threshold)
    try:
        return float(threshold)
    except ValueError:
        pass

    path = Path(threshold)
    if not path.is_file():
        raise FileNotFoundError(f"threshold {threshold!r} is neither a number nor an existing JSON file")
    document = read_json_file(path)
    value = document.get("threshold") if isinstance(document, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{path} needs a finite number under the key \"threshold\", got {value!r}")

    # A file from eua calibrate names its score. The attack scores the energy at the last prompt
    # token, so a threshold on another score would give a meaningless refusal rate.
    score = document.get("score")
    kind = score.get("kind") if isinstance(score, dict) else None
    if kind not in (None, "prompt"):
        raise ValueError(
            f"{path} was calibrated on the {kind!r} score, but the attack scores the energy at the last "
            f"prompt token; calibrate with --score.kind prompt, or pass the threshold as a number"
        )
    return float(value)


def read_retain_truth_ratios(path: str, forget_size: int) -> dict[int, float]:
    """Return ``{forget row index: truth ratio}`` of the retain model's results file."""
    document = read_results(path)
    try:
        forget = document["per_item"]["forget"]
        ratios = forget["truth_ratio"]
    except (KeyError, TypeError) as error:
        raise ResultsError(f"{path} has no per_item.forget.truth_ratio; evaluate the retain model with `eua test` first") from error
    indices = forget.get("index", list(range(len(ratios))))
    if len(ratios) != forget_size:
        raise ResultsError(
            f"{path} has {len(ratios)} forget items but the forget split has {forget_size}; "
            "evaluate the retain model on the same forget split"
        )
    return {int(index): float(ratio) for index, ratio in zip(indices, ratios) if ratio is not None}


def refusal_rate(energies: np.ndarray, threshold: float | None) -> float | None:
    """Return the share of queries whose last-prompt-token energy exceeds ``threshold``.

    This is the rule of ``RefusalGuard`` with a ``prompt`` score: it refuses when energy > threshold.
    """
    if threshold is None or energies.size == 0:
        return None
    return float(np.mean(energies > threshold))


def summarize(
    forget_scores: dict[str, np.ndarray],
    forget_indices: Sequence[int],
    retain_scores: dict[str, np.ndarray],
    retain_ratios: dict[int, float] | None,
    threshold: float | None,
) -> dict[str, Any]:
    """Aggregate one evaluation: the TOFU forget metrics, energy AUROC and refusal rates."""
    matched = None
    if retain_ratios is not None:
        matched = RetainReference(truth_ratios=[retain_ratios[index] for index in forget_indices if index in retain_ratios])
    summary = aggregate({"forget": forget_scores, "retain": retain_scores}, matched)
    summary["forget/items"] = len(forget_indices)
    summary["forget/refusal_rate"] = refusal_rate(forget_scores["energy_prompt"], threshold)
    summary["retain/refusal_rate"] = refusal_rate(retain_scores["energy_prompt"], threshold)
    return summary


FORGET_CORRECT_FIELD = EVAL_SETS["forget"]
RETAIN_CORRECT_FIELD = EVAL_SETS["retain"]
