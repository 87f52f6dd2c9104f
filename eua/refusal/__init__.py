"""Energy-based refusal at inference: score queries, calibrate a threshold, guard generation.

- :mod:`eua.refusal.scoring`: query energy (last prompt token or the first ``k`` generated tokens).
- :mod:`eua.refusal.calibration`: empirical and split-conformal thresholds, the model fingerprint.
- :mod:`eua.refusal.guard`: ``RefusalGuard`` and the ``predict`` records.
- :mod:`eua.refusal.metrics`: refusal rate and guarded ROUGE-L as torchmetrics.
- :mod:`eua.refusal.evaluate` and :mod:`eua.refusal.calibrate`: the ``eua calibrate`` command.
- :mod:`eua.refusal.data` and :mod:`eua.refusal.writer`: ``eua predict``'s input and output files.
"""

from eua.refusal.calibration import CalibrationError, FingerprintMismatchError, Threshold, model_fingerprint
from eua.refusal.guard import GuardOutput, GuardSettings, RefusalGuard
from eua.refusal.scoring import ScoreDefinition

__all__ = [
    "CalibrationError",
    "FingerprintMismatchError",
    "GuardOutput",
    "GuardSettings",
    "RefusalGuard",
    "ScoreDefinition",
    "Threshold",
    "model_fingerprint",
]
