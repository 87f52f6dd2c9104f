"""A non-finite loss or energy stops training with step, term and row indices, after a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from eua.guards import NonFiniteLossError, check_finite
from eua.objectives import SFT
from eua.objectives.base import ObjectiveOutput

from tests.reliability.helpers import make_datamodule, make_trainer

BAD_STEP = 2


class SFTBreaksAtStep(SFT):
    """SFT whose loss (or one term) turns non-finite at global step ``BAD_STEP``."""

    def __init__(self, broken_term: str = "loss", value: float = math.nan) -> None:
        self.broken_term = broken_term
        self.value = value

    def __call__(self, module, batch) -> ObjectiveOutput:
        output = super().__call__(module, batch)
        if module.global_step != BAD_STEP:
            return output
        if self.broken_term == "loss":
            return ObjectiveOutput(output.loss * self.value, output.terms)
        terms = {**output.terms, self.broken_term: torch.tensor(self.value)}
        return ObjectiveOutput(output.loss, terms)


def fit_until_failure(make_module, tofu_dir: Path, root: Path, objective: SFT) -> tuple[NonFiniteLossError, dict]:
    module = make_module(objective)
    datamodule = make_datamodule(tofu_dir, "finetune")
    trainer = make_trainer(root, max_steps=5)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit(module, datamodule=datamodule)
    weights = {name: value.detach().clone() for name, value in module.state_dict().items()}
    return caught.value, weights


def test_nan_loss_stops_with_details(make_module, tofu_dir: Path, tmp_path: Path) -> None:
    error, _ = fit_until_failure(make_module, tofu_dir, tmp_path, SFTBreaksAtStep())
    message = str(error)

    assert "non-finite loss=nan at global step 2" in message
    assert "objective sft" in message
    assert "batch row indices {'batch': [" in message
    assert error.step == BAD_STEP
    assert error.terms == ["loss"]
    assert len(error.example_ids["batch"]) == 4
    assert f"Saved the last finite state to {error.checkpoint_path}" in message


def test_nonfinite_checkpoint_holds_last_good_state(make_module, tofu_dir: Path, tmp_path: Path) -> None:
    error, weights_at_failure = fit_until_failure(make_module, tofu_dir, tmp_path, SFTBreaksAtStep())

    assert error.checkpoint_path is not None
    assert error.checkpoint_path.name == "last-finite-step2.ckpt"
    checkpoint = torch.load(error.checkpoint_path, weights_only=True)
    assert checkpoint["global_step"] == BAD_STEP

    saved = checkpoint["state_dict"]
    assert all(torch.isfinite(value).all() for value in saved.values() if value.is_floating_point())
    for name, value in weights_at_failure.items():
        assert torch.equal(saved[name], value), f"{name} differs from the weights before the failing step"


def test_infinite_energy_term_stops(make_module, tofu_dir: Path, tmp_path: Path) -> None:
    objective = SFTBreaksAtStep(broken_term="forget_energy", value=math.inf)
    error, _ = fit_until_failure(make_module, tofu_dir, tmp_path, objective)

    assert error.terms == ["forget_energy"]
    assert "non-finite forget_energy=inf at global step 2" in str(error)


def test_paired_batch_ids_named_per_part() -> None:
    batch = {part: {"index": torch.tensor([3, 7])} for part in ("forget", "retain", "refusal")}
    with pytest.raises(NonFiniteLossError, match=r"'forget': \[3, 7\], 'retain': \[3, 7\], 'refusal': \[3, 7\]"):
        check_finite(torch.tensor(math.inf), {"energy_loss": torch.tensor(1.0)}, batch, step=9, objective="eua")
