"""Training objectives, one class per method, registered by name."""

from __future__ import annotations

from eua.objectives.base import Objective, ObjectiveOutput
from eua.objectives.eua import EUA
from eua.objectives.graddiff import GradDiff
from eua.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (SFT, GradDiff, EUA)}


def get_objective(name: str, **kwargs) -> Objective:
    """Build the objective registered as ``name`` with its keyword arguments."""
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; known objectives: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](**kwargs)


__all__ = ["EUA", "OBJECTIVES", "GradDiff", "Objective", "ObjectiveOutput", "SFT", "get_objective"]
