"""The ``eua`` command: LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``, plus ``pipeline``,
``attack`` and ``calibrate``.

Every run is a YAML file under ``configs/`` that the command line can override, for example::

    eua fit --config configs/methods/eua.yaml --model.learning_rate 1e-4
    eua test --config configs/evaluate.yaml --model.lm.name_or_path artifacts/tofu_tiny/eua
    eua pipeline --config configs/pipeline/tofu_tiny.yaml
    eua attack --config configs/attack.yaml --model.name_or_path artifacts/tofu_tiny/eua
    eua calibrate --config configs/calibrate.yaml --lm.name_or_path artifacts/tofu_tiny/eua
"""

from __future__ import annotations

import inspect
import logging
import os
import sys

from lightning.pytorch.cli import LightningCLI

from eua.data.datamodule import TOFUDataModule
from eua.data.tofu import DataError
from eua.evaluation.results import ResultsError
from eua.guards import NonFiniteLossError
from eua.module import UnlearningModule
from eua.refusal.calibration import CalibrationError


class EUACLI(LightningCLI):
    """LightningCLI with the TOFU folder shared between the data and the tiny model's tokenizer."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_dir", "model.lm.data_dir")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        # Checkpoints given by --ckpt_path load with torch.load(weights_only=True), so a
        # checkpoint file cannot run code; pass --weights_only false only for a trusted file.
        # The argument exists only after this private LightningCLI method (lightning 2.6) added the
        # Trainer method's arguments, so the default is set here and not in add_arguments_to_parser.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in inspect.signature(getattr(klass, subcommand)).parameters:
            parser.set_defaults(weights_only=True)
        return parser


def configure_environment() -> None:
    """Keep W&B offline unless the user chose a mode, and send library logs to stderr."""
    os.environ.setdefault("WANDB_MODE", "offline")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # An imported library may already have given the root logger a handler, which turns basicConfig
    # into a no-op and leaves the root at WARNING, so set this package's level directly.
    logging.getLogger("eua").setLevel(logging.INFO)


def build_cli(args: list[str] | None = None, run: bool = True) -> EUACLI:
    return EUACLI(
        UnlearningModule,
        TOFUDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        # allow_abbrev=False: argparse would otherwise take a misspelled key that is a prefix of a
        # real one (--trainer.max_epoch) as that key, instead of rejecting it.
        parser_kwargs={"default_env": False, "allow_abbrev": False},
    )


EXTRA_COMMANDS = """\
eua also has these commands (each takes --config FILE and --help):
  pipeline   target, retain model, unlearning methods and their evaluation in one table
  calibrate  fit the refusal threshold of an unlearned model on retained questions
  attack     relearning, quantization and rephrasing attacks on an unlearned model
"""


def main(argv: list[str] | None = None) -> None:
    configure_environment()
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in ("-h", "--help"):
        print(EXTRA_COMMANDS)  # noqa: T201 - help text is this command's output
    if arguments and arguments[0] == "pipeline":
        from eua.pipeline import pipeline_main

        pipeline_main(arguments[1:])
        return
    if arguments and arguments[0] == "attack":
        from eua.attacks.runner import attack_main

        attack_main(arguments[1:])
        return
    if arguments and arguments[0] == "calibrate":
        from eua.refusal.calibrate import calibrate_main

        calibrate_main(arguments[1:])
        return
    build_cli(argv)


# Errors caused by the user's input or files: their messages name the file, line or field and the
# fix, so the console script prints the message alone. EUA_TRACEBACK=1 shows the traceback too.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    ResultsError,
    CalibrationError,
    NonFiniteLossError,
    FileNotFoundError,
    FileExistsError,
)


def run() -> None:
    """Console-script entry point: ``main`` with one-line messages for input errors."""
    try:
        main()
    except USER_ERRORS as error:
        if os.environ.get("EUA_TRACEBACK"):
            raise
        logging.getLogger("eua").error("%s: %s", type(error).__name__, error)
        sys.exit(2)


if __name__ == "__main__":
    run()
