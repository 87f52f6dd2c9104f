"""``eua pipeline``: target, retain model, unlearning methods and their evaluation, in one command.

Stages, each a plain ``eua fit`` or ``eua test`` run of the named config files:

1. finetune the target model on forget + retain rows (``work_dir/target``);
2. finetune the retain model on the retain rows only (``work_dir/retain``);
3. evaluate the retain model, then the target against it (forget quality needs the retain log);
4. unlearn the target with each method, then evaluate it.

A stage whose output already exists (a saved model folder, a results file) is reused, unless
``force`` is set. The summary table goes to stdout and to ``work_dir/summary.md``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from jsonargparse import auto_cli

from eua.evaluation.results import read_results, write_json_atomic
from eua.evaluation.tofu import format_table

log = logging.getLogger(__name__)

DEFAULT_METHODS = {"eua": "configs/methods/eua.yaml", "graddiff": "configs/methods/graddiff.yaml"}


def _run_cli(arguments: list[str]) -> None:
    from eua.cli import build_cli

    log.info("eua %s", " ".join(arguments))
    build_cli(arguments)


def _run_dir_args(work: Path, name: str) -> list[str]:
    folder = str(work / "runs" / name)
    return ["--trainer.default_root_dir", folder, "--trainer.logger.init_args.save_dir", folder]


def run_pipeline(
    work_dir: str = "artifacts/tofu_tiny",
    data_dir: str | None = None,
    finetune_config: str = "configs/finetune.yaml",
    evaluate_config: str = "configs/evaluate.yaml",
    methods: dict[str, str] | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
) -> dict[str, dict]:
    """Run every stage and return ``{model name: aggregates}``.

    Args:
        work_dir: folder for models, results files and logs of every stage.
        data_dir: TOFU folder; unset keeps each config's ``data.data_dir``.
        finetune_config: config of the target and retain finetuning runs.
        evaluate_config: config of the evaluation runs.
        methods: ``{name: unlearning config}``; defaults to EUA and GradDiff.
        overrides: extra command-line arguments for every stage, e.g. ``["--data.forget_split", "forget05"]``.
        force: rerun stages whose outputs exist.
    """
    work = Path(work_dir)
    methods = dict(DEFAULT_METHODS if methods is None else methods)
    shared = list(overrides or [])
    if data_dir is not None:
        shared = ["--data.data_dir", data_dir, *shared]
    wall_times: dict[str, float] = {}

    def finetune(name: str, finetune_on: str) -> None:
        export = work / name
        if (export / "config.json").is_file() and not force:
            log.info("Reusing %s", export)
            return
        started = time.perf_counter()
        _run_cli(
            ["fit", "--config", finetune_config, *shared, "--data.finetune_on", finetune_on,
             "--model.export_dir", str(export), "--model.lm.tiny_dir", str(work / "tiny-init"),
             *_run_dir_args(work, name)]
        )
        wall_times[f"fit {name}"] = time.perf_counter() - started

    def unlearn(name: str, config: str) -> None:
        export = work / name
        if (export / "config.json").is_file() and not force:
            log.info("Reusing %s", export)
            return
        started = time.perf_counter()
        _run_cli(
            ["fit", "--config", config, *shared, "--model.lm.name_or_path", str(work / "target"),
             "--model.export_dir", str(export), *_run_dir_args(work, name)]
        )
        wall_times[f"fit {name}"] = time.perf_counter() - started

    def evaluate(name: str, with_retain: bool = True) -> Path:
        results = work / name / "results.json"
        if results.is_file() and not force:
            log.info("Reusing %s", results)
            return results
        started = time.perf_counter()
        retain = ["--model.retain_results", str(work / "retain" / "results.json")] if with_retain else []
        _run_cli(
            ["test", "--config", evaluate_config, *shared, "--model.lm.name_or_path", str(work / name),
             "--model.results_path", str(results), "--model.overwrite_results", "true", *retain,
             *_run_dir_args(work, f"test_{name}")]
        )
        wall_times[f"test {name}"] = time.perf_counter() - started
        return results

    started = time.perf_counter()
    finetune("target", "full")
    finetune("retain", "retain")
    evaluate("retain", with_retain=False)  # The retain model is the reference for forget quality.
    evaluate("target")
    for name, config in methods.items():
        unlearn(name, config)
        evaluate(name)
    total = time.perf_counter() - started

    rows = {name: read_results(work / name / "results.json")["aggregate"] for name in ["target", "retain", *methods]}
    table = format_table(rows)
    summary = {"rows": rows, "wall_seconds": {**wall_times, "total": total}}
    write_json_atomic(work / "summary.json", summary, overwrite=True)
    (work / "summary.md").write_text(table + "\n", encoding="utf-8")
    print(table)  # noqa: T201 - the table is this command's output
    print(f"Total wall time of this invocation: {total:.0f} s (stages run: {', '.join(wall_times) or 'none, all reused'})")  # noqa: T201
    return rows


def pipeline_main(arguments: list[str]) -> None:
    auto_cli(run_pipeline, args=arguments)
