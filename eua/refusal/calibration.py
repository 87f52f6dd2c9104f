"""Refusal thresholds fitted on retained questions, and the model fingerprint they are tied to.

The guard refuses a query whose energy ``s`` is above the threshold ``tau``. With calibration
scores ``s_(1) <= ... <= s_(n)`` of retained questions and a target false-refusal rate ``alpha``:

- ``empirical``: ``tau = s_(ceil(n (1 - alpha)))``, so at most ``alpha`` of the calibration
  questions are refused;
- ``conformal`` (split conformal): ``tau = s_(ceil((n + 1)(1 - alpha)))``. For a new retained query
  exchangeable with the calibration ones, ``P(s > tau) <= alpha``. When that rank exceeds ``n``,
  ``tau = +inf`` (no query is ever refused), so ``n`` must be at least ``ceil(1 / alpha) - 1``.

A threshold holds only for the model that produced the scores: the saved file carries a
fingerprint of the weights and the tokenizer, and :meth:`Threshold.verify` rejects any other model.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from eua.evaluation.results import read_json_file, write_json_atomic
from eua.refusal.scoring import ScoreDefinition

Method = Literal["conformal", "empirical"]
FORMAT_VERSION = 1
# Values hashed per parameter tensor: enough to tell apart two finetuning runs of one model.
FINGERPRINT_SAMPLES = 256


class CalibrationError(ValueError):
    """A threshold that cannot be fitted, read or used with the model at hand."""


class FingerprintMismatchError(CalibrationError):
    """A threshold calibrated for another model (weights or tokenizer)."""


def quantile_rank(n: int, alpha: float, method: Method) -> int:
    """Return the 1-based rank ``k`` of the sorted calibration score used as the threshold."""
    if n < 1:
        raise CalibrationError("no calibration scores; calibrate on at least one retained question")
    if not 0 < alpha < 1:
        raise CalibrationError(f"alpha must be in (0, 1), got {alpha}")

    # Exact rational arithmetic, so (n + 1) * 0.95 with n = 19 is 19 and not 19.000000000000004.
    coverage = 1 - Fraction(repr(alpha))
    if method == "conformal":
        return math.ceil((n + 1) * coverage)
    if method == "empirical":
        return max(1, math.ceil(n * coverage))
    raise CalibrationError(f"calibration method must be 'conformal' or 'empirical', got {method!r}")


def threshold_from_scores(scores: Tensor, alpha: float = 0.05, method: Method = "conformal") -> float:
    """Return the threshold for ``scores`` of retained questions; ``+inf`` when the rank exceeds ``n``."""
    values = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if not torch.isfinite(values).all():
        raise CalibrationError("calibration scores contain NaN or infinity; check the model's logits")
    rank = quantile_rank(len(values), alpha, method)
    if rank > len(values):
        return math.inf
    return float(values.sort().values[rank - 1])


def min_calibration_size(alpha: float) -> int:
    """Return the smallest ``n`` for which the conformal threshold is finite."""
    return math.ceil(1 / Fraction(repr(alpha))) - 1


# ------------------------------------------------------------------------------------ fingerprint


def model_fingerprint(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """Hash the parameter names, shapes and a strided sample of values, and the tokenizer vocabulary.

    Values are hashed as float32 after a fixed stride over each flattened tensor, so the hash costs
    ``FINGERPRINT_SAMPLES`` values per tensor whatever the model size. Loading the same weights in
    another dtype gives another fingerprint, because the energies change too.
    """
    weights = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
        flat = parameter.detach().reshape(-1)
        stride = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        sample = flat[::stride][:FINGERPRINT_SAMPLES].to("cpu", torch.float32)
        weights.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype};".encode())
        weights.update(sample.numpy().tobytes())

    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    tokenizer_hash = hashlib.sha256(vocab.encode()).hexdigest()

    return {"weights": weights.hexdigest()[:16], "tokenizer": tokenizer_hash[:16]}


def format_fingerprint(fingerprint: dict[str, str]) -> str:
    return f"weights {fingerprint.get('weights')}, tokenizer {fingerprint.get('tokenizer')}"


# ------------------------------------------------------------------------------------ threshold file


@dataclass
class Threshold:
    """A fitted refusal threshold and what it was fitted on (saved as JSON).

    Args:
        threshold: refuse a query whose energy is above this value.
        alpha: target false-refusal rate on retained questions.
        method: ``conformal`` or ``empirical``.
        n: number of calibration questions.
        score: the query-energy definition the threshold applies to.
        fingerprint: hashes of the model weights and tokenizer (:func:`model_fingerprint`).
        model: the model path or name, for people reading the file.
        calibration_set: which questions the scores came from.
        calibration_summary: minimum, median and maximum calibration score.
    """

    threshold: float
    alpha: float
    method: Method
    n: int
    score: ScoreDefinition
    fingerprint: dict[str, str]
    model: str = ""
    calibration_set: str = ""
    calibration_summary: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"]["description"] = self.score.describe()
        return {"format_version": FORMAT_VERSION, **data}

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        if not math.isfinite(self.threshold):
            raise CalibrationError(f"threshold {self.threshold} is not finite and would never refuse; not saving it")
        return write_json_atomic(path, self.to_dict(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> Threshold:
        source = Path(path)
        if not source.is_file():
            raise CalibrationError(f"threshold file {str(source)!r} not found; create it with `eua calibrate`")
        data = read_json_file(source, CalibrationError)

        required = ("threshold", "alpha", "method", "n", "score", "fingerprint")
        missing = [name for name in required if name not in data]
        if missing:
            raise CalibrationError(f"{source}: missing fields {missing}; recreate the file with `eua calibrate`")
        score = {key: value for key, value in data["score"].items() if key != "description"}
        try:
            return cls(
                threshold=float(data["threshold"]),
                alpha=float(data["alpha"]),
                method=data["method"],
                n=int(data["n"]),
                score=ScoreDefinition(**score),
                fingerprint=dict(data["fingerprint"]),
                model=data.get("model", ""),
                calibration_set=data.get("calibration_set", ""),
                calibration_summary=data.get("calibration_summary", {}),
            )
        except (TypeError, ValueError) as error:
            raise CalibrationError(f"{source}: invalid field value ({error}); recreate the file with `eua calibrate`") from error

    def verify(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, source: str = "the threshold") -> None:
        """Raise :class:`FingerprintMismatchError` unless ``model`` and ``tokenizer`` match the fingerprint."""
        current = model_fingerprint(model, tokenizer)
        if current != self.fingerprint:
            raise FingerprintMismatchError(
                f"{source} was calibrated for another model: threshold fingerprint "
                f"({format_fingerprint(self.fingerprint)}, model {self.model!r}) != fingerprint of the "
                f"model in use ({format_fingerprint(current)}). Run `eua calibrate` on this model to "
                f"fit a new threshold, or load the model the threshold was fitted on."
            )
