"""Best-checkpoint selection on a scripted metric sequence, energy histogram files, epoch summaries."""

from __future__ import annotations

import logging
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from eua.callbacks import BestCheckpoint, EnergyHistograms, EpochSummary

# (forget quality, model utility) per epoch: the mean is best at epoch 2 (0.6), not where either
# metric alone peaks (forget quality at epoch 3, model utility at epoch 0).
SCRIPT = [(0.1, 0.9), (0.3, 0.5), (0.5, 0.7), (0.9, 0.1), (0.2, 0.2)]


class ScriptedModule(L.LightningModule):
    """A one-weight model whose validation reports scripted aggregates and random energies."""

    def __init__(self, script: list[tuple[float | None, float]]) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.script = script
        self.last_results = None

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        forget_quality, utility = self.script[self.current_epoch]
        rng = np.random.default_rng(self.current_epoch)
        per_item = {
            name: {"energy_answer": rng.normal(shift, 1, 7).tolist(), "energy_prompt": rng.normal(shift, 1, 7).tolist()}
            for name, shift in (("forget", 2.0), ("retain", -1.0), ("real_authors", 0.0))
        }
        self.last_results = {
            "meta": {"model": "scripted"},
            "aggregate": {"forget_quality": forget_quality, "model_utility": utility},
            "per_item": per_item,
        }

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)


def _fit(module, root, callbacks, epochs):
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        callbacks=callbacks,
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    return trainer


def test_best_checkpoint_picks_the_best_mean(tmp_path):
    best = BestCheckpoint(dirpath=str(tmp_path / "ckpt"))
    _fit(ScriptedModule(SCRIPT), tmp_path, [best], len(SCRIPT))

    assert "best-epoch002" in best.best_model_path, best.best_model_path
    assert float(best.best_model_score) == pytest.approx(0.6)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [best.best_model_path.split("/")[-1]]
    assert torch.load(best.best_model_path, weights_only=False)["epoch"] == 2


def test_best_checkpoint_configurable_score(tmp_path):
    best = BestCheckpoint(metrics=["forget_quality"], dirpath=str(tmp_path / "ckpt"))
    _fit(ScriptedModule(SCRIPT), tmp_path, [best], len(SCRIPT))
    assert "best-epoch003" in best.best_model_path


def test_best_checkpoint_skips_missing_metrics(tmp_path):
    script = [(None, 0.9), (0.5, 0.5), (math.nan, 1.0)]
    best = BestCheckpoint(dirpath=str(tmp_path / "ckpt"))
    with pytest.warns(UserWarning, match="forget_quality.*missing"):
        _fit(ScriptedModule(script), tmp_path, [best], len(script))
    assert "best-epoch001" in best.best_model_path


def test_best_checkpoint_rejects_empty_metrics():
    with pytest.raises(ValueError, match="metrics is empty"):
        BestCheckpoint(metrics=[])


def test_energy_histograms_write_npz_and_png(tmp_path):
    histograms = EnergyHistograms(dirpath=str(tmp_path / "energy"), threshold=0.5)
    _fit(ScriptedModule(SCRIPT[:2]), tmp_path, [histograms], 2)

    files = sorted(p.name for p in (tmp_path / "energy").iterdir())
    assert files == [
        "energy_validate_epoch000_step000002.npz",
        "energy_validate_epoch000_step000002.png",
        "energy_validate_epoch001_step000004.npz",
        "energy_validate_epoch001_step000004.png",
    ]
    saved = np.load(tmp_path / "energy" / files[2])
    # holdout was not evaluated, real_authors is not an energy set by default.
    assert sorted(k for k in saved.files if "/" in k) == [
        "forget/energy_answer", "forget/energy_prompt", "retain/energy_answer", "retain/energy_prompt"
    ]
    expected = np.random.default_rng(1).normal(2.0, 1, 7)
    np.testing.assert_allclose(saved["forget/energy_answer"], expected, rtol=1e-6)
    assert float(saved["threshold"]) == 0.5
    assert int(saved["epoch"]) == 1
    assert (tmp_path / "energy" / files[1]).read_bytes()[:4] == b"\x89PNG"


def test_energy_histograms_warn_on_missing_sets(tmp_path):
    histograms = EnergyHistograms(dirpath=str(tmp_path / "energy"), sets=["forget", "holdout"])
    with pytest.warns(UserWarning, match=r"\['holdout'\] were not evaluated"):
        _fit(ScriptedModule(SCRIPT[:1]), tmp_path, [histograms], 1)
    saved = np.load(next((tmp_path / "energy").glob("*.npz")))
    assert math.isnan(float(saved["threshold"]))
    with pytest.raises(ValueError, match="field"):
        EnergyHistograms(field="energy")


def test_epoch_summary_logs_one_line_per_epoch(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        _fit(ScriptedModule(SCRIPT[:2]), tmp_path, [BestCheckpoint(dirpath=str(tmp_path)), EpochSummary()], 2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2
    assert lines[1].startswith("epoch 2/2 | step 4 | val/score 0.4 |"), lines[1]
