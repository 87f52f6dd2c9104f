"""The ``eua`` command on real TOFU data with the shipped config files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eua.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_print_config_lists_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/methods/eua.yaml"), "--print_config"])

    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: eua.objectives.EUA" in printed
    assert "gamma: 0.05" in printed


def test_unknown_key_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/finetune.yaml"), "--model.learnig_rate", "1e-3"])

    assert exit_info.value.code != 0
    assert "learnig_rate" in capsys.readouterr().err


def test_fit_then_test_through_cli(tmp_path, tiny_model_dir, tofu_dir):
    export = tmp_path / "target"
    results = tmp_path / "results.json"
    common = ["--data.data_dir", str(tofu_dir), "--data.retain_authors", "1", "--data.max_length", "96"]

    main(
        ["fit", "--config", str(REPO / "configs/finetune.yaml"), *common,
         "--model.lm.name_or_path", str(tiny_model_dir), "--model.export_dir", str(export),
         "--trainer.max_steps", "3", "--trainer.precision", "32-true",
         "--trainer.default_root_dir", str(tmp_path / "runs"),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    )
    assert (export / "model.safetensors").is_file()

    main(
        ["test", "--config", str(REPO / "configs/evaluate.yaml"), *common,
         "--model.lm.name_or_path", str(export), "--model.results_path", str(results),
         "--model.max_new_tokens", "8", "--data.eval_limit", "6", "--trainer.precision", "32-true",
         "--trainer.default_root_dir", str(tmp_path / "runs"),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    )
    document = json.loads(results.read_text())
    aggregate = document["aggregate"]
    for key in ("forget/probability", "forget/rouge_l_recall", "forget/truth_ratio", "model_utility", "energy_auroc"):
        assert key in aggregate
    assert aggregate["forget_quality"] is None
    assert len(document["per_item"]["forget"]["truth_ratio"]) == 6
    assert 0.0 <= aggregate["forget/probability"] <= 1.0


def test_console_script_prints_input_error(monkeypatch, tmp_path, caplog):
    from eua.cli import run

    monkeypatch.delenv("EUA_TRACEBACK", raising=False)
    monkeypatch.setattr(
        "sys.argv",
        ["eua", "fit", "--config", str(REPO / "configs/finetune.yaml"), "--data.data_dir", str(tmp_path / "absent"),
         "--model.lm.tiny_dir", str(tmp_path / "tiny")],
    )

    with pytest.raises(SystemExit) as exit_info, caplog.at_level("ERROR", logger="eua"):
        run()

    assert exit_info.value.code == 2
    assert "DataError: TOFU data folder" in caplog.text
    assert "absent" in caplog.text
