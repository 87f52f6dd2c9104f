"""The LightningModule: a causal LM, its energy head, an optional frozen reference copy and an objective.

``fit`` minimises the objective (SFT to make target and retain models, or an unlearning method).
``validate`` and ``test`` score every TOFU evaluation set, gather per-item values across processes
(each item once) and write one results file per run with per-item values and aggregates.
``predict`` answers questions through the refusal guard of :mod:`eua.refusal.guard`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor, nn

from eua.data.datamodule import EVAL_SETS, GENERATION_SETS
from eua.data.datasets import PairedDataset
from eua.energy import EnergyHead
from eua.evaluation.results import ResultsError, ResultsLayout, read_retain_reference, write_results
from eua.evaluation.scoring import SCORE_FIELDS, score_batch
from eua.evaluation.tofu import aggregate, format_table, per_item_table
from eua.guards import NonFiniteGuard, check_finite
from eua.metrics.per_item import PerItemScores
from eua.metrics.tofu import FORGET_QUALITY_MISSING
from eua.models.layers import layer_output
from eua.models.loading import ModelSpec, load_model, load_tokenizer
from eua.models.lora import LoraSpec, apply_lora, base_model_context, is_lora
from eua.models.sharding import fully_shard_layers, is_sharded_strategy
from eua.objectives import SFT, Objective
from eua.refusal.guard import GuardSettings, RefusalGuard, build_guard, predict_records

log = logging.getLogger(__name__)


class UnlearningModule(L.LightningModule):
    """Trains and evaluates one causal LM with one objective.

    Args:
        lm: where the language model comes from (hub id, folder, GGUF file or ``tiny``).
        objective: the training objective (``SFT`` when unset).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the training steps with a linear learning-rate warmup.
        energy_temperature: temperature of the energy head; unset takes the objective's
            ``temperature`` (EUA), else 1.
        max_new_tokens: generation length for ROUGE-L.
        generate_on_validation: also generate (for ROUGE-L) in ``validate``, which is slower.
        retain_results: results file of the retain model (eua or open-unlearning TOFU_EVAL.json
            layout), for forget quality and privleak.
        results_path: where ``test``/``validate`` write the results JSON; unset writes
            ``<log dir>/results_<stage>_epoch<E>.json``.
        overwrite_results: replace an existing results file.
        results_layout: ``eua`` (default) or ``open-unlearning`` (its TOFU_EVAL.json layout).
        export_dir: after ``fit``, save the model and tokenizer there (safetensors).
        lora: train LoRA adapters (``{r, alpha, target_modules}``) instead of every weight; the
            reference model is then the adapter-free base, with no second copy of the weights.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        refusal: ``predict``'s refusal guard: the threshold file from ``eua calibrate`` and the
            refusal texts.
    """

    def __init__(
        self,
        lm: ModelSpec = ModelSpec(),  # noqa: B008 - read only, never mutated
        objective: Objective | None = None,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        energy_temperature: float | None = None,
        max_new_tokens: int = 64,
        generate_on_validation: bool = False,
        retain_results: str | None = None,
        results_path: str | None = None,
        overwrite_results: bool = False,
        results_layout: ResultsLayout = "eua",
        export_dir: str | None = None,
        lora: LoraSpec | None = None,
        gradient_checkpointing: bool = False,
        refusal: GuardSettings = GuardSettings(),  # noqa: B008 - read only, never mutated
    ) -> None:
        super().__init__()
        self.lm_spec = lm
        self.objective = objective or SFT()
        self.save_hyperparameters(ignore=["objective"])

        self.tokenizer = load_tokenizer(self.lm_spec)
        self.model = load_model(self.lm_spec).train()
        if gradient_checkpointing:
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            self.model = apply_lora(self.model, lora, gradient_checkpointing)
        temperature = energy_temperature or getattr(self.objective, "temperature", 1.0)
        self.energy_head = EnergyHead(temperature)
        self.eval_scores = nn.ModuleDict({name: PerItemScores(SCORE_FIELDS) for name in EVAL_SETS})

        # The reference model is kept outside the module tree, so it is neither trained, nor saved
        # in checkpoints, nor wrapped by the strategy.
        self._reference: list[nn.Module] = []
        self.last_results: dict[str, Any] | None = None
        self.refusal_settings = refusal
        self.guard: RefusalGuard | None = None

    # ------------------------------------------------------------------------------ forward

    def logits(self, part: dict[str, Tensor]) -> Tensor:
        return self.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits

    @property
    def reference_model(self) -> nn.Module:
        if not self._reference:
            raise RuntimeError(f"objective {self.objective.name!r} asked for a reference model, but none was built")
        return self._reference[0]

    @contextmanager
    def reference_context(self) -> Iterator[nn.Module]:
        """Yield the frozen reference model: the saved copy, or with LoRA the base model with its adapters off."""
        if is_lora(self.model):
            with base_model_context(self.model):
                yield self.model.get_base_model()
        else:
            yield self.reference_model

    @torch.no_grad()
    def reference_logits(self, part: dict[str, Tensor]) -> Tensor:
        if is_lora(self.model):
            with base_model_context(self.model):
                return self.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        return self.reference_model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits

    def hidden_states(self, part: dict[str, Tensor], layer: int) -> Tensor:
        """Return the output ``[B, L, H]`` of decoder layer ``layer`` (0-based) of the trained model."""
        return layer_output(self.model, part, layer)

    @torch.no_grad()
    def reference_hidden_states(self, part: dict[str, Tensor], layer: int) -> Tensor:
        """Return the output ``[B, L, H]`` of decoder layer ``layer`` of the frozen reference model."""
        return layer_output(self.reference_model, part, layer)

    # ------------------------------------------------------------------------------ fit

    def configure_model(self) -> None:
        # FSDP2 (ModelParallelStrategy) hands over a device mesh; other strategies leave it unset.
        if self._device_mesh is not None:
            fully_shard_layers(self.model, self._device_mesh["data_parallel"])

    def setup(self, stage: str) -> None:
        # ``setup`` runs before Lightning restores a checkpoint, so on a resumed run (--ckpt_path)
        # the reference is still the model loaded from ``lm``, never the resumed weights.
        if stage == "fit":
            self.build_reference()

    def build_reference(self) -> None:
        """Freeze a copy of the current (starting) weights as the reference model, if the objective needs one.

        With LoRA no copy is made: the reference is the base model with the adapters switched off.
        """
        if not self.objective.needs_reference or self._reference or is_lora(self.model):
            return
        trainer = self._trainer
        if trainer is not None and is_sharded_strategy(trainer.strategy):
            # The trained model will be sharded: load the starting weights again, without
            # gradients and in bf16 when training in bf16.
            dtype = "bfloat16" if str(trainer.precision).startswith("bf16") else self.lm_spec.dtype
            reference = load_model(replace(self.lm_spec, dtype=dtype)).eval()
        else:
            reference = copy.deepcopy(self.model).eval()
        reference.requires_grad_(False)
        self._reference.append(reference)
        rank_zero_info("Built the frozen reference model from the starting weights")

    def on_fit_start(self) -> None:
        if self._reference:
            self._reference[0].to(self.device)

    def configure_callbacks(self) -> list[L.Callback]:
        return [NonFiniteGuard()]

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_dataset", None)
        if isinstance(dataset, PairedDataset):
            dataset.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.objective.paired != ("forget" in batch):
            kind = "paired forget/retain/refusal" if self.objective.paired else "plain question-answer"
            raise ValueError(
                f"objective {self.objective.name!r} needs {kind} batches; set data.mode to "
                f"{'unlearn' if self.objective.paired else 'finetune'}"
            )
        output = self.objective(self, batch)
        check_finite(output.loss, output.terms, batch, self.global_step, self.objective.name)

        batch_size = len(batch["forget"]["input_ids"]) if "forget" in batch else len(batch["input_ids"])
        self.log("train/loss", output.loss, prog_bar=True, batch_size=batch_size)
        for name, value in output.terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return output.loss

    def configure_optimizers(self) -> Any:
        # An objective may train a subset of the weights (RMU): it then defines
        # ``trainable_parameters(model)``, and every other weight is frozen so it gets no gradient.
        select = getattr(self.objective, "trainable_parameters", None)
        if select is None:
            parameters = [p for p in self.model.parameters() if p.requires_grad]
        else:
            parameters = list(select(self.model))
            chosen = {id(p) for p in parameters}
            for parameter in self.model.parameters():
                parameter.requires_grad_(id(parameter) in chosen)
            rank_zero_info(f"Training {sum(p.numel() for p in parameters):,} of the model's parameters")
        optimizer = torch.optim.AdamW(
            parameters, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
        if not self.hparams.warmup_ratio:
            return optimizer

        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = max(1, math.ceil(self.hparams.warmup_ratio * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.hparams.export_dir:
            self.export(self.hparams.export_dir)

    @rank_zero_only
    def export(self, directory: str) -> None:
        """Save the model (safetensors) and tokenizer with ``save_pretrained``."""
        target = Path(directory)
        partial = target.with_name(target.name + ".partial")
        _remove_tree(partial)  # left over from an export that crashed
        # A LoRA model is saved with its adapters merged, so it loads like any other folder.
        model = copy.deepcopy(self.model).merge_and_unload() if is_lora(self.model) else self.model
        model.save_pretrained(partial, safe_serialization=True)
        self.tokenizer.save_pretrained(partial)
        if target.exists():
            backup = target.with_name(target.name + ".old")
            target.rename(backup)
            partial.rename(target)
            _remove_tree(backup)
        else:
            partial.rename(target)
        rank_zero_info(f"Saved the model to {target}")

    # ------------------------------------------------------------------------------ evaluation

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int, generate: bool) -> None:
        set_name = self.trainer.datamodule.eval_set_names[dataloader_idx]
        generate = generate and set_name in GENERATION_SETS
        scores = score_batch(
            self.model, self.tokenizer, self.energy_head, batch, self.hparams.max_new_tokens, generate=generate
        )
        self.eval_scores[set_name].update(batch["index"], scores)

    def on_validation_start(self) -> None:
        self._check_retain_results()

    def on_test_start(self) -> None:
        self._check_retain_results()

    def _check_retain_results(self) -> None:
        """Fail before evaluating, not after, when the retain model's results file is unusable."""
        if self.hparams.retain_results:
            try:
                read_retain_reference(self.hparams.retain_results)
            except ResultsError as error:
                raise ResultsError(f"model.retain_results: {error}") from error

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, generate=self.hparams.generate_on_validation)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, generate=True)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("validate")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        per_set: dict[str, dict[str, np.ndarray]] = {}
        for name in self.trainer.datamodule.eval_set_names:
            computed = self.eval_scores[name].compute()
            per_set[name] = {field: value.cpu().numpy() for field, value in computed.items()}
            self.eval_scores[name].reset()

        retain = None
        if self.hparams.retain_results:
            try:
                retain = read_retain_reference(self.hparams.retain_results)
            except ResultsError as error:
                raise ResultsError(f"model.retain_results: {error}") from error
        aggregates = aggregate(per_set, retain)

        prefix = "val" if stage == "validate" else "test"
        for key, value in aggregates.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.log(f"{prefix}/{key}", float(value), sync_dist=False, rank_zero_only=True)

        self.last_results = {
            "meta": {
                "stage": stage,
                "model": self.lm_spec.name_or_path,
                "objective": repr(self.objective),
                "retain_results": self.hparams.retain_results,
                "epoch": self.current_epoch,
                "global_step": self.global_step,
            },
            "aggregate": aggregates,
            "per_item": {name: per_item_table(scores) for name, scores in per_set.items()},
        }
        if self.trainer.sanity_checking:
            return
        if aggregates.get("forget_quality", 0) is None:
            rank_zero_info(FORGET_QUALITY_MISSING)
        self._write_results(stage)

    @rank_zero_only
    def _write_results(self, stage: str) -> None:
        path = self.hparams.results_path
        if path is None:
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            path = folder / f"results_{stage}_epoch{self.current_epoch}.json"
            overwrite = True
        else:
            overwrite = self.hparams.overwrite_results
        written = write_results(path, self.last_results, layout=self.hparams.results_layout, overwrite=overwrite)
        rank_zero_info(f"Wrote {written}\n" + format_table({self.lm_spec.name_or_path: self.last_results["aggregate"]}))

    # ------------------------------------------------------------------------------ predict

    def on_predict_start(self) -> None:
        self.model.eval()
        self.guard = build_guard(
            self.model,
            self.tokenizer,
            self.refusal_settings,
            self.energy_head,
            self.hparams.max_new_tokens,
            self.lm_spec.data_dir,
        )
        if self.guard is None:
            rank_zero_info("No refusal threshold set (model.refusal.threshold): answering every question")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        return predict_records(
            self.guard, self.model, self.tokenizer, self.energy_head, batch, self.hparams.max_new_tokens
        )


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
