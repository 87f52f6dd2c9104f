"""Kill an EUA run with SIGKILL mid-epoch, resume it from the last checkpoint, and compare with a full run.

Both runs are real ``python -m eua.cli fit`` processes on the tiny test model: 2 epochs of 10
paired batches, a checkpoint every 3 steps, validation on 4 forget rows at the end. The killed run
stops inside step 13 (epoch 1, batch 3), after the checkpoint of step 12. The runs get fake
``HF_TOKEN`` and ``WANDB_API_KEY`` values, and no output file or log may contain them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
PAUSE_STEP = 13
FAKE_SECRETS = {"HF_TOKEN": "hf_FAKEtokenForLeakTest0123456789", "WANDB_API_KEY": "fakewandbkey0123456789abcdef0123456789abcd"}


def fit_command(model_dir: Path, data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "eua.cli", "fit",
        "--config", "configs/methods/eua.yaml",
        "--model.lm.name_or_path", str(model_dir),
        "--model.results_path", str(run_dir / "final.json"),
        "--model.export_dir", str(run_dir / "model"),
        "--data.data_dir", str(data_dir),
        "--data.batch_size", "4",
        "--data.retain_authors", "2",
        "--data.eval_sets", "[forget]",
        "--data.eval_limit", "4",
        "--trainer.precision", "32",
        "--trainer.max_epochs", "2",
        "--trainer.limit_val_batches", "1.0",
        "--trainer.check_val_every_n_epoch", "2",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        "--trainer.enable_checkpointing", "true",
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(run_dir / "checkpoints"),
        "--trainer.callbacks.every_n_train_steps", "3",
        "--trainer.callbacks.save_last", "true",
        *extra,
    ]


def run_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "WANDB_MODE"}
    environment.update(FAKE_SECRETS)
    environment["PYTHONPATH"] = str(REPO_ROOT)
    return environment


def run_to_end(command: list[str], log_path: Path) -> None:
    with log_path.open("w") as log:
        completed = subprocess.run(command, cwd=REPO_ROOT, env=run_environment(), stdout=log, stderr=subprocess.STDOUT, timeout=600)
    assert completed.returncode == 0, log_path.read_text()[-3000:]


def run_and_kill(command: list[str], marker: Path, log_path: Path) -> str:
    """Start ``command``, wait until it reaches the pause marker, then SIGKILL it."""
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=run_environment(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not marker.exists():
                assert process.poll() is None, f"run ended before step {PAUSE_STEP}: {log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "run did not reach the pause step in 300 s"
                time.sleep(0.2)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return marker.read_text()


def train_losses(run_dir: Path) -> dict[int, float]:
    """``{step: train/loss}`` over every logger version in ``run_dir`` (a resumed run adds one)."""
    losses = {}
    for metrics in sorted(run_dir.glob("lightning_logs/version_*/metrics.csv")):
        for row in csv.DictReader(metrics.open()):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tofu_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kill_resume")
    full, killed = root / "full", root / "killed"
    marker = root / "paused"

    run_to_end(fit_command(tiny_model_dir, tofu_dir, full), root / "full.log")

    pause = [
        "--trainer.callbacks+=tests.reliability.pause_callback.PauseAtStep",
        "--trainer.callbacks.step", str(PAUSE_STEP),
        "--trainer.callbacks.marker", str(marker),
    ]
    paused_at = run_and_kill(fit_command(tiny_model_dir, tofu_dir, killed, *pause), marker, root / "killed.log")
    assert paused_at.split() == [str(PAUSE_STEP), "3"], f"expected a kill inside epoch 1 at batch 3, got {paused_at!r}"

    last = killed / "checkpoints" / "last.ckpt"
    assert last.is_file(), "the killed run left no last.ckpt"
    resume = ["--ckpt_path", str(last)]
    run_to_end(fit_command(tiny_model_dir, tofu_dir, killed, *resume), root / "resumed.log")
    return {"root": root, "full": full, "killed": killed}


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(runs: dict[str, Path]) -> None:
    full = json.loads((runs["full"] / "final.json").read_text())
    resumed = json.loads((runs["killed"] / "final.json").read_text())

    assert resumed["meta"]["global_step"] == full["meta"]["global_step"] == 20
    for key, value in full["aggregate"].items():
        other = resumed["aggregate"][key]
        if value is None:
            assert other is None, key
        else:
            assert math.isclose(value, other, rel_tol=1e-5, abs_tol=1e-6), f"{key}: full {value}, resumed {other}"


@pytest.mark.slow
def test_resume_repeats_loss_curve(runs: dict[str, Path]) -> None:
    full = train_losses(runs["full"])
    resumed = train_losses(runs["killed"])

    assert sorted(full) == list(range(20))
    for step in range(12, 20):
        assert math.isclose(full[step], resumed[step], rel_tol=1e-5), f"step {step}: full {full[step]}, resumed {resumed[step]}"


@pytest.mark.slow
def test_resume_restores_loader_position(runs: dict[str, Path]) -> None:
    resumed_log = (runs["root"] / "resumed.log").read_text()
    assert "Restored all states from the checkpoint" in resumed_log
    assert "dataloader is not resumable" not in resumed_log

    # The CLI resumes with weights_only=True, so the checkpoint must load that way.
    # The last periodic checkpoint of the resumed run is step 18: epoch 1, 8 of its 10 batches done.
    checkpoint = torch.load(runs["killed"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 18
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches_yielded": 8, "seed": 0}]


@pytest.mark.slow
def test_outputs_contain_no_secrets(runs: dict[str, Path]) -> None:
    files = [path for path in runs["root"].rglob("*") if path.is_file()]
    assert any(path.suffix == ".ckpt" for path in files)
    assert any(path.name == "final.json" for path in files)
    assert any(path.suffix == ".log" for path in files)

    for path in files:
        content = path.read_bytes()
        for name, secret in FAKE_SECRETS.items():
            assert secret.encode() not in content, f"{name} value found in {path}"


@pytest.mark.slow
def test_saved_models_use_safetensors(runs: dict[str, Path]) -> None:
    for run in ("full", "killed"):
        model_dir = runs[run] / "model"
        assert (model_dir / "model.safetensors").is_file()
        assert not list(model_dir.glob("*.bin"))
        assert not list(model_dir.glob("*.pt"))
