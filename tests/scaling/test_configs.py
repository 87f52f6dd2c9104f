"""Sweep definitions, logger, callback and LoRA options parse through the ``eua`` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eua.cli import build_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO_ROOT / "configs" / "sweeps").glob("*.yaml"))


def _print_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--print_config", *args])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err[-2000:]
    return yaml.safe_load(captured.out)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda path: path.stem)
def test_sweep_parameters_are_cli_options(sweep, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    definition = yaml.safe_load(sweep.read_text())
    assert definition["metric"]["name"] == "val/score"
    command = definition["command"]
    assert command[:4] == ["${env}", "python", "-m", "eua.cli"]
    assert command[-1] == "${args}"

    values = {}
    for key, spec in definition["parameters"].items():
        values[key] = spec["values"][-1] if "values" in spec else spec["max"]
    arguments = command[5:-1] + [f"--{key}={value}" for key, value in values.items()]
    config = _print_config(arguments, capsys)

    for key, value in values.items():
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == pytest.approx(value), key


def test_sweep_covers_eua_hyperparameters():
    keys = set(yaml.safe_load((REPO_ROOT / "configs" / "sweeps" / "eua.yaml").read_text())["parameters"])
    expected = {f"model.objective.init_args.{name}" for name in ("gamma", "alpha", "fraction", "temperature")}
    assert expected | {"model.learning_rate"} == keys


def test_lora_and_logger_options_parse(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    config = _print_config(
        [
            "--config", "configs/methods/eua.yaml",
            "--config", "configs/logger/wandb.yaml",
            "--config", "configs/callbacks/evaluation.yaml",
            "--model.lora.r", "16",
            "--model.lora.target_modules", "[q_proj,v_proj]",
            "--model.gradient_checkpointing", "true",
        ],
        capsys,
    )
    assert config["model"]["lora"] == {"r": 16, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert config["model"]["gradient_checkpointing"] is True
    assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger")
    callbacks = [callback["class_path"] for callback in config["trainer"]["callbacks"]]
    assert callbacks == [
        "lightning.pytorch.callbacks.RichProgressBar",
        "eua.callbacks.EnergyHistograms",
        "eua.callbacks.BestCheckpoint",
        "eua.callbacks.EpochSummary",
    ]
    assert config["trainer"]["check_val_every_n_epoch"] == 2
