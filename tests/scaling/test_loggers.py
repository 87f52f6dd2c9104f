"""Evaluation during training reaches the logger: W&B offline writes a run folder; CSV needs no account."""

from __future__ import annotations

import csv
import socket
import time

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from eua.callbacks import EnergyHistograms
from eua.module import UnlearningModule
from eua.objectives import EUA
from tests.scaling.conftest import cpu_trainer


@pytest.fixture()
def no_wandb_account(monkeypatch, tmp_path):
    """No W&B credentials anywhere, and any network connection attempt fails the test."""
    for name in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def _fit(tiny_spec, make_data, root, logger, callbacks=()):
    torch.manual_seed(0)
    module = UnlearningModule(lm=tiny_spec, objective=EUA(gamma=1.0), learning_rate=1e-2)
    trainer = cpu_trainer(
        root,
        max_steps=-1,
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1.0,
        check_val_every_n_epoch=1,
        log_every_n_steps=1,
        logger=logger,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=make_data(eval_sets=["forget", "retain"]))
    return trainer


def test_wandb_offline_writes_a_run_folder(tiny_spec, make_data, tmp_path, monkeypatch, no_wandb_account):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    original_connect = socket.socket.connect

    def refuse_remote(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
            raise AssertionError(f"W&B offline tried to reach {address}")
        return original_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse_remote)
    logger = WandbLogger(project="eua-test", save_dir=str(tmp_path))
    _fit(tiny_spec, make_data, tmp_path, logger, [EnergyHistograms(dirpath=str(tmp_path / "energy"), threshold=0.0)])
    logger.experiment.finish()

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    run_files = list(runs[0].glob("run-*.wandb"))
    assert len(run_files) == 1, "no run data file"
    images = list(runs[0].rglob("files/media/images/**/*.png"))
    assert len(images) == 2, "one energy histogram per validation"
    # The W&B service process writes the run file asynchronously; give it time to flush on a busy machine.
    deadline = time.monotonic() + 60
    records = run_files[0].read_bytes()
    while b"learning_rate" not in records and time.monotonic() < deadline:
        time.sleep(0.5)
        records = run_files[0].read_bytes()
    assert b"learning_rate" in records, "the run's config was not logged"
    assert b"val/energy_auroc" in records, "validation metrics were not logged"


def test_csv_logger_without_wandb_account(tiny_spec, make_data, tmp_path, no_wandb_account):
    logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    _fit(tiny_spec, make_data, tmp_path, logger)

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    validations = [row for row in rows if row.get("val/energy_auroc")]
    assert [int(row["epoch"]) for row in validations] == [0, 1]
    assert any(row.get("train/loss") for row in rows)
    assert (tmp_path / "csv" / "version_0" / "hparams.yaml").is_file()
