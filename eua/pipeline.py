"""``eua pipeline``: target, retain model, unlearning methods and their evaluation, in one command.

Stages, each a plain ``eua fit``, ``eua test`` or ``eua calibrate`` run of the named config files:

1. finetune the target model on forget + retain rows (``work_dir/target``);
2. finetune the retain model on the retain rows only (``work_dir/retain``);
3. evaluate the retain model, then the target against it (forget quality needs the retain log);
4. unlearn the target with each method, then evaluate it.

With ``calibrate_config``, each model's refusal threshold is fitted and its refusal rates reported
right after its evaluation, and the table gains refusal columns.

A stage whose output already exists (a saved model folder, a results file, a refusal report) is
reused, unless ``force`` is set. The summary table goes to stdout and to ``work_dir/summary.md``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from jsonargparse import auto_cli

from eua.evaluation.results import ResultsError, read_json_file, read_results, write_json_atomic, write_text_atomic
from eua.evaluation.tofu import format_table
from eua.refusal.calibrate import REPORT_FILE, THRESHOLD_FILE

log = logging.getLogger(__name__)

DEFAULT_METHODS = {"eua": "configs/methods/eua.yaml", "graddiff": "configs/methods/graddiff.yaml"}


def _run_cli(arguments: list[str]) -> None:
    from eua.cli import build_cli

    log.info("eua %s", " ".join(arguments))
    # The stage reads its arguments from sys.argv: Lightning's DDP launcher starts the other ranks
    # with sys.argv, so they must run this stage (eua fit ...), not the whole pipeline again.
    own_arguments = sys.argv
    sys.argv = [own_arguments[0], *arguments]
    try:
        build_cli()
    finally:
        sys.argv = own_arguments


def _run_calibrate(arguments: list[str]) -> None:
    from eua.refusal.calibrate import calibrate_main

    log.info("eua calibrate %s", " ".join(arguments))
    calibrate_main(arguments)


def _table_row(folder: Path) -> dict:
    """Return a model's aggregates, plus ``refusal/<set>`` rates when its refusal report exists."""
    row = dict(read_results(folder / "results.json")["aggregate"])
    report = folder / REPORT_FILE
    if not report.is_file():
        return row

    document = read_json_file(report, ResultsError)
    sets = document.get("sets") if isinstance(document, dict) else None
    valid = isinstance(sets, dict) and all(isinstance(entry, dict) and "refusal_rate" in entry for entry in sets.values())
    if not valid:
        raise ResultsError(
            f"{report}: expected an object 'sets' with a 'refusal_rate' per set; delete the file or "
            f"pass --force true to rerun eua calibrate"
        )

    row.update({f"refusal/{name}": entry["refusal_rate"] for name, entry in sets.items()})
    return row


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
    finetune_overrides: list[str] | None = None,
    unlearn_overrides: list[str] | None = None,
    evaluate_overrides: list[str] | None = None,
    calibrate_config: str | None = None,
    calibrate_overrides: list[str] | None = None,
    force: bool = False,
) -> dict[str, dict]:
    """Run every stage and return ``{model name: aggregates}``.

    Args:
        work_dir: folder for models, results files and logs of every stage.
        data_dir: TOFU folder; unset keeps each config's ``data.data_dir``.
        finetune_config: config of the target and retain finetuning runs.
        evaluate_config: config of the evaluation runs.
        methods: ``{name: unlearning config}``; defaults to EUA and GradDiff.
        overrides: extra command-line arguments for every fit and test stage, e.g.
            ``["--data.forget_split", "forget05"]``. Calibration has its own argument names, so
            repeat data settings such as ``--forget_split`` in ``calibrate_overrides``.
        finetune_overrides: extra arguments of the target and retain finetuning runs only, after ``overrides``.
        unlearn_overrides: extra arguments of every unlearning run only, e.g. ``["--model.learning_rate", "1e-5"]``.
        evaluate_overrides: extra arguments of every evaluation run only.
        calibrate_config: ``eua calibrate`` config run on every model after its evaluation; unset
            skips refusal calibration.
        calibrate_overrides: extra ``eua calibrate`` arguments, e.g. ``["--eval_limit=null"]``.
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
            ["fit", "--config", finetune_config, *shared, *(finetune_overrides or []), "--data.finetune_on", finetune_on,
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
            ["fit", "--config", config, *shared, *(unlearn_overrides or []), "--model.lm.name_or_path", str(work / "target"),
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
            ["test", "--config", evaluate_config, *shared, *(evaluate_overrides or []), "--model.lm.name_or_path", str(work / name),
             "--model.results_path", str(results), "--model.overwrite_results", "true", *retain,
             *_run_dir_args(work, f"test_{name}")]
        )
        wall_times[f"test {name}"] = time.perf_counter() - started
        return results

    def calibrate(name: str) -> None:
        if calibrate_config is None:
            return
        report = work / name / REPORT_FILE
        if report.is_file() and not force:
            log.info("Reusing %s", report)
            return
        started = time.perf_counter()
        data = [] if data_dir is None else ["--data_dir", data_dir]
        # The output paths come last, so that the reuse check above finds this model's report.
        _run_calibrate(
            ["--config", calibrate_config, *data, *(calibrate_overrides or []), "--lm.name_or_path", str(work / name),
             "--evaluate", "true", "--output", str(work / name / THRESHOLD_FILE), "--report", str(report)]
        )
        wall_times[f"calibrate {name}"] = time.perf_counter() - started

    started = time.perf_counter()
    finetune("target", "full")
    finetune("retain", "retain")
    evaluate("retain", with_retain=False)  # The retain model is the reference for forget quality.
    evaluate("target")
    calibrate("retain")
    calibrate("target")
    for name, config in methods.items():
        unlearn(name, config)
        evaluate(name)
        calibrate(name)
    total = time.perf_counter() - started

    rows = {name: _table_row(work / name) for name in ["target", "retain", *methods]}
    table = format_table(rows)
    summary = {"rows": rows, "wall_seconds": {**wall_times, "total": total}}
    write_json_atomic(work / "summary.json", summary, overwrite=True)
    write_text_atomic(work / "summary.md", table + "\n", overwrite=True)
    print(table)  # noqa: T201 - the table is this command's output
    print(f"Total wall time of this invocation: {total:.0f} s (stages run: {', '.join(wall_times) or 'none, all reused'})")  # noqa: T201
    return rows


def pipeline_main(arguments: list[str]) -> None:
    auto_cli(run_pipeline, args=arguments)
