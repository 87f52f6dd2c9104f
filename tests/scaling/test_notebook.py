"""The energy-histogram notebook runs top to bottom on energy files from two small real runs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import torch
from nbclient import NotebookClient

from eua.callbacks import EnergyHistograms
from eua.module import UnlearningModule
from eua.objectives import EUA, GradDiff
from tests.scaling.conftest import cpu_trainer

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "energy_histograms.ipynb"


def test_notebook_executes_on_a_saved_run(tiny_spec, make_data, tmp_path, monkeypatch):
    runs = {}
    for name, objective in (("eua", EUA(gamma=1.0)), ("graddiff", GradDiff())):
        torch.manual_seed(0)
        module = UnlearningModule(lm=tiny_spec, objective=objective, learning_rate=1e-2)
        folder = tmp_path / name
        trainer = cpu_trainer(
            folder,
            max_steps=-1,
            max_epochs=2,
            limit_train_batches=1,
            limit_val_batches=1.0,
            check_val_every_n_epoch=1,
            callbacks=[EnergyHistograms(threshold=-5.0)],
        )
        trainer.fit(module, datamodule=make_data(eval_sets=["forget", "retain"]))
        saved = sorted((folder / "energy").glob("*.npz"))
        assert [p.name[:28] for p in saved] == ["energy_validate_epoch000_ste", "energy_validate_epoch001_ste"]
        with np.load(saved[-1]) as values:
            assert values["forget/energy_answer"].shape == (5,)
            assert np.isfinite(values["forget/energy_answer"]).all()
        runs[name] = str(folder)

    figure = tmp_path / "figure.png"
    monkeypatch.setenv("EUA_ENERGY_RUNS", json.dumps(runs))
    monkeypatch.setenv("EUA_ENERGY_FIGURE", str(figure))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "4 evaluations from 2 methods" in outputs
    assert "AUROC forget vs retain" in outputs
    assert figure.read_bytes()[:4] == b"\x89PNG"
