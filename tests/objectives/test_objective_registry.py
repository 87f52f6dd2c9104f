"""The objective registry: every method by name, and a clear error for an unknown one."""

from __future__ import annotations

import pytest

from eua.objectives import OBJECTIVES, get_objective

METHODS = ["dpo", "eua", "gradascent", "graddiff", "idkdpo", "idknll", "npo", "rmu", "satimp", "simnpo", "undial", "wga"]


@pytest.mark.parametrize("name", METHODS)
def test_registry_builds_method(name):
    objective = get_objective(name)
    assert objective.name == name
    assert objective.paired


def test_registry_keys_match_names():
    for name, cls in OBJECTIVES.items():
        assert cls.name == name


def test_registry_passes_arguments():
    objective = get_objective("npo", beta=0.5, retain_loss="kl")
    assert objective.beta == 0.5
    assert objective.needs_reference


def test_registry_unknown_name_lists_known():
    with pytest.raises(KeyError) as error:
        get_objective("gradient_ascent")
    message = str(error.value)
    assert "unknown objective 'gradient_ascent'" in message
    for name in METHODS:
        assert name in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [("gradascent", False), ("graddiff", False), ("simnpo", False), ("idknll", False), ("satimp", False),
     ("wga", False), ("npo", True), ("dpo", True), ("idkdpo", True), ("undial", True), ("rmu", True), ("eua", True)],
)
def test_registry_reference_needs(name, expected):
    assert get_objective(name).needs_reference is expected
