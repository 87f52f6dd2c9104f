"""Callbacks for evaluation during training: energy histograms, best-checkpoint selection, epoch summaries.

All three read ``UnlearningModule.last_results``, which validation and test fill on every process
with the same values (per-item scores gathered across processes, each item once), so they behave
the same under single-device, DDP and FSDP runs.

- ``EnergyHistograms`` saves the per-item answer energies of the forget, retain and holdout sets
  after each evaluation as ``energy_<stage>_epoch<E>_step<S>.npz`` and a PNG histogram, with the
  refusal threshold marked when one is given, and logs the image to W&B when that logger is used.
- ``BestCheckpoint`` is Lightning's ``ModelCheckpoint`` monitoring ``val/score``, the mean of the
  chosen aggregates (by default forget quality and model utility).
- ``EpochSummary`` writes one log line per training epoch.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

log = logging.getLogger(__name__)

ENERGY_FIELDS = ("energy_answer", "energy_prompt")
DEFAULT_ENERGY_SETS = ("forget", "retain", "holdout")


def _last_results(pl_module: L.LightningModule) -> dict[str, Any] | None:
    return getattr(pl_module, "last_results", None)


class EnergyHistograms(Callback):
    """Save forget, retain and holdout energies after each validation and test, as ``.npz`` and PNG.

    Each ``.npz`` contains ``<set>/energy_answer`` and ``<set>/energy_prompt`` (one value per item,
    in item order) and the scalars ``epoch``, ``global_step``, ``stage`` and ``threshold`` (NaN
    when unset). See ``notebooks/energy_histograms.ipynb`` to compare runs and checkpoints.

    Args:
        dirpath: output folder; unset uses ``<log dir>/energy``.
        sets: evaluation sets to keep; unset keeps forget, retain and holdout when evaluated.
        field: energy drawn in the PNG, ``energy_answer`` (mean over answer tokens) or
            ``energy_prompt`` (at the first answer position).
        threshold: refusal threshold on the energy, drawn as a vertical line.
        bins: histogram bins.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        sets: list[str] | None = None,
        field: str = "energy_answer",
        threshold: float | None = None,
        bins: int = 40,
    ) -> None:
        if field not in ENERGY_FIELDS:
            raise ValueError(f"EnergyHistograms.field must be one of {ENERGY_FIELDS}, got {field!r}")
        self.dirpath = dirpath
        self.sets = list(sets) if sets is not None else None
        self.field = field
        self.threshold = threshold
        self.bins = bins
        self.saved: list[Path] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer, pl_module, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module, "test")

    def folder(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "energy"

    @rank_zero_only
    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        results = _last_results(pl_module)
        if not results:
            return
        per_item = results["per_item"]
        wanted = self.sets if self.sets is not None else [name for name in DEFAULT_ENERGY_SETS if name in per_item]
        missing = [name for name in wanted if name not in per_item]
        if missing:
            rank_zero_warn(
                f"EnergyHistograms: sets {missing} were not evaluated (evaluated: {sorted(per_item)}); "
                "add them to data.eval_sets or drop them from the callback's sets"
            )
        present = [name for name in wanted if name in per_item]
        if not present:
            return

        arrays: dict[str, np.ndarray] = {}
        for name in present:
            for field in ENERGY_FIELDS:
                arrays[f"{name}/{field}"] = np.asarray(per_item[name][field], dtype=np.float32)
        threshold = float("nan") if self.threshold is None else float(self.threshold)
        folder = self.folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"energy_{stage}_epoch{trainer.current_epoch:03d}_step{trainer.global_step:06d}"
        npz_path = folder / f"{stem}.npz"
        np.savez_compressed(
            npz_path,
            epoch=trainer.current_epoch,
            global_step=trainer.global_step,
            stage=stage,
            threshold=threshold,
            model=str(results["meta"].get("model", "")),
            **arrays,
        )

        title = f"{results['meta'].get('model', '')} {stage} epoch {trainer.current_epoch}"
        png_path = plot_energy_histogram(
            {name: arrays[f"{name}/{self.field}"] for name in present},
            folder / f"{stem}.png",
            threshold=self.threshold,
            bins=self.bins,
            title=title,
            xlabel=self.field.replace("_", " "),
        )
        self.saved += [npz_path, png_path]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"energy/{stage}", images=[str(png_path)], step=trainer.global_step)
        log.info("Saved energy values to %s and the histogram to %s", npz_path, png_path)


def plot_energy_histogram(
    values: dict[str, np.ndarray],
    path: str | Path,
    threshold: float | None = None,
    bins: int = 40,
    title: str = "",
    xlabel: str = "energy",
) -> Path:
    """Draw overlaid density histograms of ``{set name: energies}`` and save them as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = {name: v[np.isfinite(v)] for name, v in values.items()}
    everything = np.concatenate([v for v in finite.values() if v.size] or [np.zeros(1)])
    edges = np.histogram_bin_edges(everything, bins=bins)

    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name, energies in finite.items():
        axes.hist(energies, bins=edges, density=True, alpha=0.5, label=f"{name} (n={energies.size})")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"refusal threshold {threshold:.3g}")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("density")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


class BestCheckpoint(ModelCheckpoint):
    """Keep the best checkpoints by ``val/score``, the mean of aggregates from the last validation.

    The score is computed on every process from ``last_results`` (already gathered), put in
    ``trainer.callback_metrics`` and sent to the loggers, then ``ModelCheckpoint`` decides as usual.
    Validation without one of the metrics (forget quality needs ``model.retain_results``; model
    utility needs ``model.generate_on_validation: true`` for ROUGE-L) saves nothing and warns.

    Args:
        metrics: aggregate keys averaged into the score, e.g. ``forget_quality``,
            ``model_utility``, ``energy_auroc``, ``forget/truth_ratio``.
        mode: ``max`` keeps the highest score, ``min`` the lowest.
        save_top_k: how many checkpoints to keep.
        dirpath, filename, save_last, verbose: as in ``ModelCheckpoint``; ``filename`` may use
            ``{epoch}`` and ``{step}``.
    """

    def __init__(
        self,
        metrics: list[str] | None = None,
        mode: str = "max",
        save_top_k: int = 1,
        dirpath: str | None = None,
        filename: str = "best-epoch{epoch:03d}-step{step:06d}",
        save_last: bool | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor="val/score",
            mode=mode,
            save_top_k=save_top_k,
            save_last=save_last,
            verbose=verbose,
            save_on_train_epoch_end=False,
            auto_insert_metric_name=False,
        )
        self.metrics = list(metrics) if metrics is not None else ["forget_quality", "model_utility"]
        if not self.metrics:
            raise ValueError("BestCheckpoint.metrics is empty; name at least one aggregate, e.g. model_utility")

    def score(self, aggregates: dict[str, Any]) -> float | None:
        """Mean of the chosen aggregates, or ``None`` (with a warning) when one is missing or NaN."""
        values = [aggregates.get(name) for name in self.metrics]
        missing = [name for name, v in zip(self.metrics, values) if v is None or not math.isfinite(float(v))]
        if missing:
            rank_zero_warn(
                f"BestCheckpoint: {missing} missing from this validation, no checkpoint saved. Forget quality "
                "needs --model.retain_results; ROUGE-L-based model utility needs --model.generate_on_validation true"
            )
            return None
        return float(np.mean([float(v) for v in values]))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = _last_results(pl_module)
        if trainer.sanity_checking or not results:
            return
        score = self.score(results["aggregate"])
        if score is None:
            return
        trainer.callback_metrics[self.monitor] = torch.tensor(score)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({self.monitor: score}, step=trainer.global_step)
        super().on_validation_end(trainer, pl_module)


class EpochSummary(Callback):
    """Log one line per training epoch: epoch, step, time and the chosen metrics that exist.

    Args:
        keys: ``trainer.callback_metrics`` keys to show, in order; absent ones are skipped.
    """

    def __init__(self, keys: list[str] | None = None) -> None:
        self.keys = list(keys) if keys is not None else [
            "train/loss",
            "val/score",
            "val/forget_quality",
            "val/model_utility",
            "val/forget/truth_ratio",
            "val/energy_auroc",
        ]
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info(self.summary(trainer))

    def summary(self, trainer: L.Trainer) -> str:
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        for key in self.keys:
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4g}")
        parts.append(f"{time.monotonic() - self._start:.1f}s")
        return " | ".join(parts)
