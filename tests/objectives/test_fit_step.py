"""One optimisation step per objective through the Lightning Trainer on the tiny test model."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from eua.data.datamodule import TOFUDataModule
from eua.module import UnlearningModule
from eua.objectives import EUA, SFT, GradDiff, get_objective
from eua.objectives.base import mean_nll


def fit_one_step(tiny_spec, tofu_dir, objective, mode: str) -> tuple[UnlearningModule, TOFUDataModule]:
    torch.manual_seed(0)
    module = UnlearningModule(lm=tiny_spec, objective=objective, learning_rate=1e-2)
    datamodule = TOFUDataModule(
        data_dir=str(tofu_dir), forget_split="forget01", retain_authors=1, mode=mode, max_length=96, batch_size=4
    )
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
    )
    trainer.fit(module, datamodule)
    return module, datamodule


@pytest.mark.parametrize(
    ("objective", "mode", "terms"),
    [
        (SFT(), "finetune", {"train/loss", "train/nll"}),
        (GradDiff(), "unlearn", {"train/loss", "train/forget_nll", "train/retain_nll"}),
        (EUA(), "unlearn", {"train/loss", "train/energy_loss", "train/retain_nll", "train/forget_energy"}),
    ],
    ids=["sft", "graddiff", "eua"],
)
def test_one_step_updates_weights(tiny_spec, tofu_dir, objective, mode, terms):
    reference = UnlearningModule(lm=tiny_spec).model.state_dict()

    module, _ = fit_one_step(tiny_spec, tofu_dir, objective, mode)

    assert module.global_step == 1
    changed = [name for name, value in module.model.state_dict().items() if not torch.equal(value, reference[name])]
    assert changed, "no weight changed after one optimisation step"
    assert terms <= set(module.trainer.callback_metrics)
    assert torch.isfinite(module.trainer.callback_metrics["train/loss"])


def test_graddiff_step_raises_forget_nll(tiny_spec, tofu_dir):
    module, datamodule = fit_one_step(tiny_spec, tofu_dir, GradDiff(alpha=0.0), "unlearn")
    batch = datamodule.train_dataset
    forget = next(iter(torch.utils.data.DataLoader(batch.forget, batch_size=8, collate_fn=_collate(datamodule))))

    before = UnlearningModule(lm=tiny_spec).model
    with torch.no_grad():
        nll_before = mean_nll(before(input_ids=forget["input_ids"]).logits, forget["labels"])
        nll_after = mean_nll(module.model(input_ids=forget["input_ids"]).logits, forget["labels"])

    assert nll_after > nll_before


def test_eua_builds_frozen_reference(tiny_spec, tofu_dir):
    module, _ = fit_one_step(tiny_spec, tofu_dir, EUA(), "unlearn")

    reference = module.reference_model
    assert all(not parameter.requires_grad for parameter in reference.parameters())
    assert not any(name.startswith("_reference") for name in module.state_dict())


def test_paired_objective_rejects_plain_batches(tiny_spec, tofu_dir):
    with pytest.raises(ValueError, match="set data.mode to unlearn"):
        fit_one_step(tiny_spec, tofu_dir, GradDiff(), "finetune")


def test_unknown_objective_lists_known():
    with pytest.raises(KeyError, match="known objectives: .*eua.*graddiff.*sft"):
        get_objective("gradient_magic")


def _collate(datamodule: TOFUDataModule):
    from eua.data.datasets import QACollator

    return QACollator(datamodule.pad_token_id)
