"""``eua pipeline`` end to end on real TOFU data with a tiny budget."""

from __future__ import annotations

import json

from eua.pipeline import run_pipeline


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
