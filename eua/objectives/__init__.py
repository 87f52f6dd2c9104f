"""Training objectives, one class per method, registered by name."""

from __future__ import annotations

from eua.objectives.base import Objective, ObjectiveOutput
from eua.objectives.dpo import DPO, IdkDPO
from eua.objectives.eua import EUA
from eua.objectives.gradascent import GradAscent
from eua.objectives.graddiff import GradDiff
from eua.objectives.idknll import IdkNLL
from eua.objectives.npo import NPO
from eua.objectives.rmu import RMU
from eua.objectives.satimp import SatImp
from eua.objectives.sft import SFT
from eua.objectives.simnpo import SimNPO
from eua.objectives.undial import UNDIAL
from eua.objectives.wga import WGA

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (SFT, EUA, GradAscent, GradDiff, NPO, SimNPO, IdkNLL, DPO, IdkDPO, RMU, UNDIAL, SatImp, WGA)
}


def get_objective(name: str, **kwargs) -> Objective:
    """Build the objective registered as ``name`` with its keyword arguments."""
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; known objectives: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](**kwargs)


__all__ = [
    "DPO",
    "EUA",
    "NPO",
    "OBJECTIVES",
    "RMU",
    "SFT",
    "UNDIAL",
    "WGA",
    "GradAscent",
    "GradDiff",
    "IdkDPO",
    "IdkNLL",
    "Objective",
    "ObjectiveOutput",
    "SatImp",
    "SimNPO",
    "get_objective",
]
