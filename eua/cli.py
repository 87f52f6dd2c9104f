"""The ``eua`` command: LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``, plus ``pipeline`` and ``calibrate``.

Every run is a YAML file under ``configs/`` that the command line can override, for example::

    eua fit --config configs/unlearn/eua.yaml --model.learning_rate 1e-4
    eua test --config configs/evaluate.yaml --model.lm.name_or_path artifacts/tofu_tiny/eua
    eua pipeline --config configs/pipeline/tofu_tiny.yaml
    eua calibrate --config configs/calibrate.yaml --lm.name_or_path artifacts/tofu_tiny/eua
"""

from __future__ import annotations

import logging
import os
import sys

from lightning.pytorch.cli import LightningCLI

from eua.data.datamodule import TOFUDataModule
from eua.module import UnlearningModule


class EUACLI(LightningCLI):
    """LightningCLI with the TOFU folder shared between the data and the tiny model's tokenizer."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_dir", "model.lm.data_dir")


def configure_environment() -> None:
    """Keep W&B offline unless the user chose a mode, and send library logs to stderr."""
    os.environ.setdefault("WANDB_MODE", "offline")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_cli(args: list[str] | None = None, run: bool = True) -> EUACLI:
    return EUACLI(
        UnlearningModule,
        TOFUDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False},
    )


def main(argv: list[str] | None = None) -> None:
    configure_environment()
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] == "pipeline":
        from eua.pipeline import pipeline_main

        pipeline_main(arguments[1:])
        return
    if arguments and arguments[0] == "calibrate":
        from eua.refusal.calibrate import calibrate_main

        calibrate_main(arguments[1:])
        return
    build_cli(argv)


if __name__ == "__main__":
    main()
