"""``eua attack``: evaluate an unlearned checkpoint before and after each re-emergence attack.

For every attack the runner reports forget ROUGE-L, forget probability, forget truth ratio, forget
quality (when a retain model's results file is given), energy AUROC (forget against retain energies)
and, when a threshold is given, the energy-guard refusal rate. Each row compares the attacked model
with the unattacked one on the same forget items:

- ``relearn/<source>``: the held-out half of each forget author's questions, before and after
  fine-tuning on the other half (``forget_half``) or on retain rows (``retain``);
- ``quantize/<method>``: every forget row, before and after quantization;
- ``rephrase/<view>``: every forget row (that the view keeps), original question against the rewrite.

The results go to one JSON file (``output``) and a Markdown table to stdout.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import auto_cli

from eua.attacks.evaluation import (
    FORGET_CORRECT_FIELD,
    RETAIN_CORRECT_FIELD,
    Scorer,
    read_retain_truth_ratios,
    read_threshold,
    summarize,
)
from eua.attacks.quantize import METHODS, quantize_model
from eua.attacks.relearn import SOURCES, relearn as relearn_model, split_authors
from eua.attacks.rephrase import VIEWS, rephrase_rows
from eua.data.datamodule import TOFUDataModule
from eua.energy import EnergyHead
from eua.evaluation.results import write_json_atomic
from eua.models.loading import TINY, ModelSpec, load_model, load_tokenizer

log = logging.getLogger(__name__)

ATTACKS = ("relearn", "quantize", "rephrase")
TABLE_COLUMNS = (
    ("forget ROUGE-L", "forget/rouge_l_recall"),
    ("forget prob", "forget/probability"),
    ("forget TR", "forget/truth_ratio"),
    ("forget quality", "forget_quality"),
    ("energy AUROC", "energy_auroc"),
    ("refusal rate", "forget/refusal_rate"),
)


@dataclass
class RelearnSettings:
    """Relearning attack settings.

    Args:
        sources: training data of each relearning run: ``forget_half`` (the first half of each
            forget author's questions) or ``retain`` (retain rows only).
        steps: optimizer steps.
        learning_rate: AdamW learning rate (about 1e-5 for a pretrained model).
        batch_size: training batch size.
        seed: seed of the batch order.
    """

    sources: list[Literal["forget_half", "retain"]] = field(default_factory=lambda: list(SOURCES))
    steps: int = 30
    learning_rate: float = 1e-5
    batch_size: int = 8
    seed: int = 0


@dataclass
class QuantizeSettings:
    """Quantization attack settings.

    Args:
        methods: ``int8`` (per-channel symmetric) and/or ``int4`` (group-wise asymmetric).
        group_size: input columns per ``int4`` group.
        skip: names of linear modules kept in float (the last part of the module name).
    """

    methods: list[Literal["int8", "int4"]] = field(default_factory=lambda: list(METHODS))
    group_size: int = 128
    skip: list[str] = field(default_factory=lambda: ["lm_head"])


def _check_checkpoint(spec: ModelSpec) -> None:
    """Raise a clear error for a local checkpoint path that is missing or not a saved model folder."""
    if spec.name_or_path == TINY or spec.name_or_path.endswith(".gguf"):
        return
    folder = Path(spec.name_or_path)
    # A missing path whose parent folder exists is a local path with a typo, not a hub id.
    if not folder.exists() and str(folder.parent) != "." and folder.parent.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} not found; pass the export_dir of an `eua fit` run")
    if folder.exists() and not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json, so it is not a saved model folder; pass the export_dir of an `eua fit` run"
        )


def run_attacks(
    model: ModelSpec,
    data_dir: str | None = None,
    forget_split: str = "forget10",
    retain_split: str | None = None,
    retain_authors: int | None = None,
    attacks: list[Literal["relearn", "quantize", "rephrase"]] | None = None,
    relearn: RelearnSettings = RelearnSettings(),  # noqa: B008 - read only
    quantize: QuantizeSettings = QuantizeSettings(),  # noqa: B008 - read only
    rephrase_views: list[str] | None = None,
    threshold: float | str | None = None,
    retain_results: str | None = None,
    energy_temperature: float = 1.0,
    max_length: int = 256,
    eval_batch_size: int = 32,
    max_new_tokens: int = 64,
    retain_rouge: bool = False,
    output: str = "artifacts/attacks/results.json",
    overwrite: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the attacks on one checkpoint, write the results JSON and return it.

    Args:
        model: the unlearned checkpoint (usually the ``export_dir`` folder of an ``eua fit`` run).
        data_dir: TOFU folder of ``<split>.jsonl`` files.
        forget_split: ``forget01``, ``forget05`` or ``forget10``; the checkpoint's unlearning split.
        retain_split: retain split; unset uses the complement of ``forget_split``.
        retain_authors: keep only the first N retain authors (for relearning on retain rows and
            for the retain energies of energy AUROC).
        attacks: any of ``relearn``, ``quantize``, ``rephrase``; unset runs all three.
        relearn: relearning settings, see :class:`RelearnSettings`.
        quantize: quantization settings, see :class:`QuantizeSettings`.
        rephrase_views: any of ``paraphrased``, ``role_play``, ``novel``, ``one_word``,
            ``cut_first_sentence``; unset runs all.
        threshold: energy-guard threshold, a number or a JSON file with a ``"threshold"`` key;
            unset leaves the refusal rate out.
        retain_results: results file of the retain model (``eua test``), for forget quality.
        energy_temperature: temperature of the energy at which AUROC and refusal are scored.
        max_length: maximum tokens of prompt plus answer.
        eval_batch_size: evaluation batch size.
        max_new_tokens: generation length for ROUGE-L.
        retain_rouge: also generate on the retain set (slower; the table does not show it).
        output: results JSON path.
        overwrite: replace an existing ``output``.
        seed: torch seed set before loading and attacking.
    """
    started = time.perf_counter()
    attacks = list(ATTACKS if attacks is None else attacks)
    views = list(VIEWS if rephrase_views is None else rephrase_views)
    unknown = sorted(set(attacks) - set(ATTACKS)) + sorted(set(views) - set(VIEWS))
    if unknown:
        raise ValueError(f"unknown attacks or rephrase views {unknown}; attacks: {list(ATTACKS)}, views: {list(VIEWS)}")
    if Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite true to replace it")
    cutoff = read_threshold(threshold)
    torch.manual_seed(seed)

    # The data module supplies the same evaluation rows as `eua test`; only its row methods are used.
    data = TOFUDataModule(
        data_dir=data_dir, forget_split=forget_split, retain_split=retain_split, retain_authors=retain_authors
    )
    forget_rows = data.eval_rows("forget")
    retain_rows = data.eval_rows("retain")
    ratios = read_retain_truth_ratios(retain_results, len(forget_rows)) if retain_results else None
    if ratios is None:
        log.info("No retain_results given: forget quality is left out")

    # Check that the data has what each attack needs before the slow steps start.
    source_split = f"{forget_split}_perturbed"
    if "relearn" in attacks:
        train_indices, held_out = split_authors(forget_rows, split=source_split)
    rephrased = {view: rephrase_rows(forget_rows, view, split=source_split) for view in views} if "rephrase" in attacks else {}

    if model.data_dir is None:
        model.data_dir = data_dir
    _check_checkpoint(model)
    tokenizer = load_tokenizer(model)
    base = load_model(model).eval()
    scorer = Scorer(tokenizer, EnergyHead(energy_temperature), max_length, eval_batch_size, max_new_tokens)

    def score_forget(network: torch.nn.Module, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return scorer.score(network, rows, FORGET_CORRECT_FIELD, generate=True)

    def score_retain(network: torch.nn.Module) -> dict[str, np.ndarray]:
        return scorer.score(network, retain_rows, RETAIN_CORRECT_FIELD, generate=retain_rouge)

    def subset(scores: dict[str, np.ndarray], indices: list[int]) -> dict[str, np.ndarray]:
        return {name: values[indices] for name, values in scores.items()}

    def row(before: dict[str, Any], after: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"before": before, "after": after, **extra}

    log.info("Scoring the unattacked model")
    all_indices = list(range(len(forget_rows)))
    base_forget = score_forget(base, forget_rows)
    base_retain = score_retain(base)
    unattacked = summarize(base_forget, all_indices, base_retain, ratios, cutoff)
    results: dict[str, dict[str, Any]] = {}

    if "relearn" in attacks:
        before = summarize(subset(base_forget, held_out), held_out, base_retain, ratios, cutoff)
        held_out_rows = [forget_rows[index] for index in held_out]
        for source in relearn.sources:
            if source == "forget_half":
                train_rows = [forget_rows[index] for index in train_indices]
            else:
                train_rows = data.retain_rows()
            log.info("Relearning on %s (%d rows)", source, len(train_rows))
            attacked, losses = relearn_model(
                base, tokenizer, train_rows, relearn.steps, relearn.learning_rate,
                relearn.batch_size, max_length, relearn.seed,
            )
            after = summarize(score_forget(attacked, held_out_rows), held_out, score_retain(attacked), ratios, cutoff)
            results[f"relearn/{source}"] = row(before, after, train_rows=len(train_rows), losses=losses)
            del attacked

    if "quantize" in attacks:
        for method in quantize.methods:
            attacked = load_model(model).eval()
            quantized = quantize_model(attacked, method, quantize.group_size, quantize.skip)
            after = summarize(score_forget(attacked, forget_rows), all_indices, score_retain(attacked), ratios, cutoff)
            name = f"quantize/{method}" if method == "int8" else f"quantize/{method}_g{quantize.group_size}"
            results[name] = row(unattacked, after, layers=len(quantized))
            del attacked

    if "rephrase" in attacks:
        for view, (rows, kept) in rephrased.items():
            if not rows:
                log.warning("Rephrase view %s keeps no forget row (every question has one sentence); it is left out", view)
                results[f"rephrase/{view}"] = row(None, None, items=0)
                continue
            before = summarize(subset(base_forget, kept), kept, base_retain, ratios, cutoff)
            # NOTE: forget quality compares with the retain model's truth ratios on the original questions.
            after = summarize(score_forget(base, rows), kept, base_retain, ratios, cutoff)
            results[f"rephrase/{view}"] = row(before, after, example=rows[0]["question"])

    document = {
        "meta": {
            "model": model.name_or_path,
            "forget_split": forget_split,
            "retain_authors": retain_authors,
            "retain_results": retain_results,
            "threshold": cutoff,
            "relearn": vars(relearn),
            "quantize": vars(quantize),
            "wall_seconds": time.perf_counter() - started,
        },
        "unattacked": unattacked,
        "attacks": results,
    }
    write_json_atomic(output, document, overwrite=overwrite)
    log.info("Wrote %s", output)
    return document


def _number(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.3g}" if key == "forget_quality" else f"{value:.3f}"


def format_attack_table(document: dict[str, Any]) -> str:
    """Render a results document as a Markdown table: one row per attack, ``before → after`` per metric."""
    header = "| attack | items | " + " | ".join(label for label, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]

    unattacked = document["unattacked"]
    cells = [_number(unattacked.get(key), key) for _, key in TABLE_COLUMNS]
    lines.append(f"| none | {unattacked['forget/items']} | " + " | ".join(cells) + " |")

    for name, result in document["attacks"].items():
        before, after = result["before"], result["after"]
        if after is None:
            cells = ["n/a"] * len(TABLE_COLUMNS)
            lines.append(f"| {name} | 0 | " + " | ".join(cells) + " |")
            continue
        cells = [f"{_number(before.get(key), key)} → {_number(after.get(key), key)}" for _, key in TABLE_COLUMNS]
        lines.append(f"| {name} | {after['forget/items']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attack_main(arguments: list[str]) -> None:
    """Entry point of ``eua attack``: parse the arguments of :func:`run_attacks`, run it, print the table."""
    document = auto_cli(run_attacks, args=arguments)
    print(f"Re-emergence attacks on {document['meta']['model']} (before → after)")  # noqa: T201
    print(format_attack_table(document))  # noqa: T201 - the table is this command's output
