"""``eua pipeline`` end to end on real TOFU data with a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eua.pipeline import run_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write_stage_outputs(arguments: list[str], aggregate: dict | None = None) -> None:
    """Stand in for a stage: create the model folder of a fit run or the results file of a test run."""
    value = dict(zip(arguments, arguments[1:]))
    if arguments[0] == "fit":
        export = Path(value["--model.export_dir"])
        export.mkdir(parents=True)
        (export / "config.json").write_text("{}")
    else:
        Path(value["--model.results_path"]).write_text(json.dumps({"aggregate": aggregate or {}}))


def test_pipeline_runs_and_reuses(tmp_path, tiny_model_dir, tofu_dir, caplog):
    overrides = [
        "--model.lm.name_or_path", str(tiny_model_dir), "--trainer.max_steps", "2",
        "--trainer.precision", "32-true", "--data.retain_authors", "1", "--data.max_length", "96",
        "--data.eval_limit", "4", "--model.max_new_tokens", "4",
    ]
    work = tmp_path / "work"

    rows = run_pipeline(work_dir=str(work), data_dir=str(tofu_dir), overrides=overrides)

    assert list(rows) == ["target", "retain", "eua", "graddiff"]
    assert rows["retain"]["forget_quality"] is None
    for name in ("target", "eua", "graddiff"):
        assert 0.0 <= rows[name]["forget_quality"] <= 1.0
    summary = json.loads((work / "summary.json").read_text())
    assert summary["wall_seconds"]["total"] > 0
    assert "| eua |" in (work / "summary.md").read_text()

    caplog.clear()
    with caplog.at_level("INFO"):
        run_pipeline(work_dir=str(work), data_dir=str(tofu_dir), overrides=overrides)
    assert sum("Reusing" in record.getMessage() for record in caplog.records) == 8


def test_stage_overrides_stay_in_stage(tmp_path, monkeypatch):
    calls: list[list[str]] = []

    def fake_cli(arguments: list[str]) -> None:
        calls.append(arguments)
        _write_stage_outputs(arguments)

    monkeypatch.setattr("eua.pipeline._run_cli", fake_cli)
    monkeypatch.chdir(tmp_path)
    run_pipeline(
        work_dir="work",
        methods={"eua": "eua.yaml"},
        overrides=["--seed_everything", "1"],
        finetune_overrides=["--model.learning_rate", "1e-4"],
        unlearn_overrides=["--model.learning_rate", "3e-5"],
        evaluate_overrides=["--data.eval_limit", "8"],
    )

    stages = {(call[0], call[2]): call for call in calls}
    assert [call[0] for call in calls] == ["fit", "fit", "test", "test", "fit", "test"]
    for call in calls:
        assert call[3:5] == ["--seed_everything", "1"]
    finetunes = [call for call in calls if call[2] == "configs/finetune.yaml"]
    assert all(call[5:7] == ["--model.learning_rate", "1e-4"] for call in finetunes)
    assert stages[("fit", "eua.yaml")][5:7] == ["--model.learning_rate", "3e-5"]
    evaluations = [call for call in calls if call[0] == "test"]
    assert all(call[5:7] == ["--data.eval_limit", "8"] for call in evaluations)
    assert all("1e-4" not in call and "3e-5" not in call for call in evaluations)


@pytest.mark.parametrize(
    "pipeline_config, model, learning_rates, retain_authors, devices",
    [
        ("configs/experiments/smollm2_tofu/pipeline.yaml", "smollm2-gguf", {"fit": 1e-4, "unlearn": 3e-5}, 3, 1),
        (
            "configs/experiments/smollm2_tofu/pipeline_llama32_gpu.yaml",
            "meta-llama/Llama-3.2-1B-Instruct",
            {"fit": 1e-5, "unlearn": 1e-5},
            None,
            4,
        ),
    ],
)
def test_experiment_pipelines_parse(
    pipeline_config, model, learning_rates, retain_authors, devices, tmp_path, monkeypatch
):
    """Every stage of the experiment pipelines parses with its overrides (nothing is trained or loaded)."""
    from jsonargparse import ArgumentParser, auto_cli

    from eua.cli import EUACLI, build_cli
    from eua.refusal.calibrate import run_calibration

    configs = []

    def parse_only(arguments: list[str]) -> None:
        monkeypatch.setattr(EUACLI, "instantiate_classes", lambda self: None)
        configs.append((arguments[0], build_cli(arguments[1:], run=False).config))
        _write_stage_outputs(arguments)

    def parse_calibration_only(arguments: list[str]) -> None:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--config", action="config")
        parser.add_function_arguments(run_calibration)
        configs.append(("calibrate", parser.parse_args(arguments)))
        (Path(dict(zip(arguments, arguments[1:]))["--lm.name_or_path"]) / "refusal_report.json").write_text('{"sets": {}}')

    monkeypatch.setattr("eua.pipeline._run_cli", parse_only)
    monkeypatch.setattr("eua.pipeline._run_calibrate", parse_calibration_only)
    auto_cli(run_pipeline, args=["--config", str(REPO_ROOT / pipeline_config), "--work_dir", str(tmp_path / "work")])

    commands = [command for command, _ in configs]
    assert commands.count("fit") == 2 + 6
    assert commands.count("test") == 2 + 6
    assert commands.count("calibrate") == 2 + 6
    finetunes, unlearns = configs[:2], [config for command, config in configs[2:] if command == "fit"]
    calibrations = [config for command, config in configs if command == "calibrate"]
    for _, config in finetunes:
        assert config.model.lm.name_or_path == model
        assert config.model.learning_rate == learning_rates["fit"]
    for config in unlearns:
        assert config.model.learning_rate == learning_rates["unlearn"]
        assert config.model.lm.name_or_path == str(tmp_path / "work" / "target")
    for command, config in configs:
        if command == "calibrate":
            assert config.retain_authors == retain_authors
            continue
        assert config.data.retain_authors == retain_authors
        assert str(config.trainer.devices) == str(devices)  # Lightning takes "4" and 4 alike
    assert [Path(config.lm.name_or_path).name for config in calibrations] == [
        "retain", "target", "eua", "graddiff", "npo", "simnpo", "idkdpo", "rmu"
    ]


def test_calibrate_stage_adds_refusal_columns(tmp_path, monkeypatch, capsys):
    calibrated: list[str] = []

    def fake_calibrate(arguments: list[str]) -> None:
        value = dict(zip(arguments, arguments[1:]))
        model = Path(value["--lm.name_or_path"])
        assert value["--report"] == str(model / "refusal_report.json")
        calibrated.append(model.name)
        rate = 1.0 if model.name == "eua" else 0.0
        sets = {"forget": {"refusal_rate": rate}, "forget_paraphrased": {"refusal_rate": rate}, "retain": {"refusal_rate": 0.025}}
        (model / "refusal_report.json").write_text(json.dumps({"sets": sets}))

    monkeypatch.setattr("eua.pipeline._run_cli", lambda arguments: _write_stage_outputs(arguments, {"model_utility": 0.5}))
    monkeypatch.setattr("eua.pipeline._run_calibrate", fake_calibrate)
    work = tmp_path / "work"
    rows = run_pipeline(work_dir=str(work), methods={"eua": "eua.yaml"}, calibrate_config="calibrate.yaml")

    assert calibrated == ["retain", "target", "eua"]
    assert rows["eua"]["refusal/forget"] == 1.0
    assert rows["target"]["refusal/retain"] == 0.025
    table = (work / "summary.md").read_text()
    assert "| forget refused | paraphrased forget refused | retain false refusal |" in table
    assert "| eua | n/a | n/a | n/a | n/a | 0.500 | n/a | n/a | n/a | 1.000 | 1.000 | 0.025 |" in table

    calibrated.clear()
    run_pipeline(work_dir=str(work), methods={"eua": "eua.yaml"}, calibrate_config="calibrate.yaml")
    assert calibrated == [], "existing refusal reports are reused"
    capsys.readouterr()


def test_no_reports_no_refusal_columns(tmp_path, monkeypatch):
    monkeypatch.setattr("eua.pipeline._run_cli", _write_stage_outputs)
    run_pipeline(work_dir=str(tmp_path / "work"), methods={"eua": "eua.yaml"})

    assert "refused" not in (tmp_path / "work" / "summary.md").read_text()


def test_stage_runs_from_sys_argv(monkeypatch):
    """Lightning's DDP launcher restarts the other ranks from sys.argv: they must rerun the stage."""
    import sys

    from eua.pipeline import _run_cli

    seen = []
    monkeypatch.setattr("eua.cli.build_cli", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["/bin/eua", "pipeline", "--config", "pipeline.yaml"])

    _run_cli(["fit", "--config", "eua.yaml"])

    assert seen == [["/bin/eua", "fit", "--config", "eua.yaml"]]
    assert sys.argv == ["/bin/eua", "pipeline", "--config", "pipeline.yaml"]


@pytest.mark.parametrize("report", ['{"threshold": 1.0}', '[1, 2]', '{"sets": {"forget": {"n": 40}}}'])
def test_malformed_refusal_report_rejected(report, tmp_path, monkeypatch):
    from eua.evaluation.results import ResultsError

    monkeypatch.setattr("eua.pipeline._run_cli", _write_stage_outputs)
    run_pipeline(work_dir=str(tmp_path / "work"), methods={})
    (tmp_path / "work" / "target" / "refusal_report.json").write_text(report)

    with pytest.raises(ResultsError, match=r"target/refusal_report\.json: expected an object 'sets'.*--force true"):
        run_pipeline(work_dir=str(tmp_path / "work"), methods={})
