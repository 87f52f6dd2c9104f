"""The TOFU LightningDataModule: finetuning, paired unlearning batches and evaluation sets.

``mode="finetune"`` trains on plain question-answer batches: the forget and retain rows
(``finetune_on="full"``, the target model) or the retain rows alone (``"retain"``, the retain
model). ``mode="unlearn"`` yields paired ``{"forget", "retain", "refusal"}`` batches.

``retain_authors`` keeps the first N authors of the retain split (TOFU has 20 questions per author,
in author order), so a small run still uses whole authors. Evaluation on the retain side uses the
rows of ``retain_perturbed`` whose question is in that subset.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from eua.data.datasets import (
    EvalCollator,
    EvalDataset,
    PairedCollator,
    PairedDataset,
    QACollator,
    QADataset,
    refusal_rows,
)
from eua.data.formatting import describe_format
from eua.data.resumable import EpochShuffleSampler, ResumableDataLoader
from eua.data.tofu import DataError, holdout_split_for, load_split, retain_split_for
from eua.refusal.data import QuestionCollator, QuestionDataset, read_questions

log = logging.getLogger(__name__)

QUESTIONS_PER_AUTHOR = 20

# Evaluation sets and the answer that counts as correct for the truth ratio on each. The holdout
# set (TOFU authors no model was finetuned on, as many as the forget set) serves the
# membership-inference and energy comparisons; it has no perturbed answers.
EVAL_SETS: dict[str, str] = {
    "forget": "paraphrased_answer",
    "retain": "paraphrased_answer",
    "real_authors": "answer",
    "world_facts": "answer",
    "holdout": "answer",
}
# Sets whose ROUGE scores are used; generation is skipped on the others.
GENERATION_SETS = frozenset({"forget", "retain", "real_authors", "world_facts"})


class TOFUDataModule(L.LightningDataModule):
    """TOFU splits from a folder of JSON Lines files (or the hub), tokenized for one model.

    Args:
        data_dir: folder of ``<split>.jsonl`` files; unset reads ``$EUA_TOFU_DIR``, then the hub.
        forget_split: ``forget01``, ``forget05`` or ``forget10``.
        retain_split: the retain split; unset uses the complement (``forget05`` gives ``retain95``).
        retain_authors: keep only the first N retain authors (20 rows each); unset keeps all.
        mode: ``finetune`` (plain batches) or ``unlearn`` (paired forget/retain/refusal batches).
        finetune_on: ``full`` (forget and retain rows: the target model) or ``retain``.
        eval_sets: evaluation sets to build, any of forget, retain, real_authors, world_facts,
            holdout (``holdoutNN`` matching the forget split); unset builds all of them.
        eval_limit: keep only the first N rows of each evaluation set (for quick checks).
        max_length: maximum tokens of prompt plus answer; longer answers are cut.
        batch_size: training batch size (per part, for paired batches).
        eval_batch_size: evaluation batch size.
        num_workers: DataLoader worker processes.
        seed: seed of the training order and of the random retain partners in paired batches.
        allow_overlap: accept forget rows that also appear in the retain set (same question and
            answer) with a warning; ``false`` raises ``DataError`` instead.
        predict_file: JSON Lines file of ``{"question": ...}`` rows that ``predict`` answers.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        forget_split: str = "forget10",
        retain_split: str | None = None,
        retain_authors: int | None = None,
        mode: Literal["finetune", "unlearn"] = "unlearn",
        finetune_on: Literal["full", "retain"] = "full",
        eval_sets: list[str] | None = None,
        eval_limit: int | None = None,
        max_length: int = 256,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        allow_overlap: bool = True,
        predict_file: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        unknown = set(eval_sets or []) - set(EVAL_SETS)
        if unknown:
            raise ValueError(f"unknown eval_sets {sorted(unknown)}; choose from {list(EVAL_SETS)}")
        self.eval_set_names = list(eval_sets) if eval_sets is not None else list(EVAL_SETS)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_dataset: QADataset | PairedDataset | None = None
        self.eval_datasets: dict[str, EvalDataset] = {}
        self.predict_dataset: QuestionDataset | None = None

    # ----------------------------------------------------------------------------------- rows

    def forget_rows(self) -> list[dict[str, Any]]:
        return load_split(self.hparams.forget_split, self.hparams.data_dir)

    def retain_rows(self) -> list[dict[str, Any]]:
        split = self.hparams.retain_split or retain_split_for(self.hparams.forget_split)
        rows = load_split(split, self.hparams.data_dir)
        authors = self.hparams.retain_authors
        if authors is not None:
            if authors < 1:
                raise DataError(f"retain_authors must be at least 1, got {authors}")
            rows = rows[: authors * QUESTIONS_PER_AUTHOR]
        self._warn_overlap(rows)
        return rows

    def _warn_overlap(self, retain: list[dict[str, Any]]) -> None:
        forget_pairs = {(row["question"], row["answer"]) for row in self.forget_rows()}
        shared = sum((row["question"], row["answer"]) in forget_pairs for row in retain)
        if not shared:
            return
        retain_split = self.hparams.retain_split or retain_split_for(self.hparams.forget_split)
        message = (
            f"{shared} of {len(retain)} rows of retain split {retain_split!r} also appear in forget split "
            f"{self.hparams.forget_split!r} (same question and answer)"
        )
        if not self.hparams.allow_overlap:
            raise DataError(f"{message}; remove them from the retain split, or set data.allow_overlap true to accept them")
        rank_zero_warn(f"{message}; the model is trained to forget and to keep them at once. Check the splits")

    def eval_rows(self, name: str) -> list[dict[str, Any]]:
        """Rows of evaluation set ``name``, restricted to the retain subset for ``retain``."""
        if name == "forget":
            rows = load_split(f"{self.hparams.forget_split}_perturbed", self.hparams.data_dir)
        elif name == "retain":
            rows = load_split("retain_perturbed", self.hparams.data_dir)
            if self.hparams.retain_authors is not None:
                kept = {row["question"] for row in self.retain_rows()}
                rows = [row for row in rows if row["question"] in kept]
        elif name == "holdout":
            rows = load_split(holdout_split_for(self.hparams.forget_split), self.hparams.data_dir)
        else:
            rows = load_split(f"{name}_perturbed", self.hparams.data_dir)
        if self.hparams.eval_limit is not None:
            rows = rows[: self.hparams.eval_limit]
        if not rows:
            raise DataError(f"evaluation set {name!r} is empty after filtering; raise retain_authors or eval_limit")
        return rows

    # ----------------------------------------------------------------------------------- setup

    def _resolve_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            module = getattr(self.trainer, "lightning_module", None) if self.trainer else None
            self.tokenizer = getattr(module, "tokenizer", None)
        if self.tokenizer is None:
            raise RuntimeError("TOFUDataModule needs a tokenizer: set datamodule.tokenizer or attach a model that has one")
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        tokenizer = self._resolve_tokenizer()
        max_length = self.hparams.max_length
        rank_zero_info(f"Prompt format: {describe_format(tokenizer)}; padding with {self._describe_padding(tokenizer)}")

        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._build_train_dataset(tokenizer, max_length)

        if stage in (None, "fit", "validate", "test") and not self.eval_datasets:
            for name in self.eval_set_names:
                dataset = EvalDataset(self.eval_rows(name), tokenizer, max_length, correct_field=EVAL_SETS[name])
                self._report_truncation(f"{name} evaluation", dataset)
                self.eval_datasets[name] = dataset

        if stage == "predict" and self.predict_dataset is None:
            if not self.hparams.predict_file:
                raise DataError("predict needs questions: set data.predict_file to a JSON Lines file of {\"question\": ...} rows")
            self.predict_dataset = QuestionDataset(read_questions(self.hparams.predict_file), tokenizer)

    def _build_train_dataset(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> QADataset | PairedDataset:
        forget = self.forget_rows()
        retain = self.retain_rows()

        if self.hparams.mode == "finetune":
            rows = retain + forget if self.hparams.finetune_on == "full" else retain
            dataset = QADataset(rows, tokenizer, max_length)
            self._report_truncation("finetune", dataset)
            rank_zero_info(f"Finetuning on {len(dataset)} rows ({self.hparams.finetune_on})")
            return dataset

        refusals = [row["text"] for row in load_split("idontknow", self.hparams.data_dir)]
        parts = {
            "forget": QADataset(forget, tokenizer, max_length),
            "retain": QADataset(retain, tokenizer, max_length),
            "refusal": QADataset(refusal_rows(forget, refusals), tokenizer, max_length),
        }
        for name, part in parts.items():
            self._report_truncation(name, part)
        rank_zero_info(f"Unlearning {len(forget)} forget rows against {len(retain)} retain rows")
        return PairedDataset(parts["forget"], parts["retain"], parts["refusal"], seed=self.hparams.seed)

    def _report_truncation(self, name: str, dataset: QADataset | EvalDataset) -> None:
        if dataset.truncated_count:
            rank_zero_warn(
                f"{dataset.truncated_count} of {len(dataset)} {name} rows had an answer cut to "
                f"max_length={self.hparams.max_length} tokens; raise data.max_length to keep them whole"
            )

    # ----------------------------------------------------------------------------------- loaders

    @staticmethod
    def _describe_padding(tokenizer: PreTrainedTokenizerBase) -> str:
        if tokenizer.pad_token_id is not None:
            return f"pad token {tokenizer.pad_token!r}"
        return f"eos token {tokenizer.eos_token!r} because the tokenizer has no pad token (padding is masked out)"

    @property
    def pad_token_id(self) -> int:
        tokenizer = self._resolve_tokenizer()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token (or eos_token)")
        return pad

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        if isinstance(dataset, PairedDataset):
            collate = PairedCollator(self.pad_token_id)
        else:
            collate = QACollator(self.pad_token_id)

        if self.trainer is not None and isinstance(self.trainer.strategy, ParallelStrategy):
            # Lightning rebuilds the loader to wrap its sampler for distributed training, which the
            # resumable loader does not allow, so a plain DataLoader gets the same seeded order.
            # NOTE: a multi-process run therefore resumes at the start of the interrupted epoch.
            return DataLoader(
                dataset,
                batch_size=self.hparams.batch_size,
                sampler=EpochShuffleSampler(dataset, self.hparams.seed),
                collate_fn=collate,
                num_workers=self.hparams.num_workers,
            )
        return ResumableDataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            collate_fn=collate,
            num_workers=self.hparams.num_workers,
            seed=self.hparams.seed,
        )

    def eval_dataloaders(self) -> list[DataLoader]:
        return [
            DataLoader(
                dataset,
                batch_size=self.hparams.eval_batch_size,
                shuffle=False,
                collate_fn=EvalCollator(self.pad_token_id),
                num_workers=self.hparams.num_workers,
            )
            for dataset in self.eval_datasets.values()
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders()

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.predict_dataset,
            batch_size=self.hparams.eval_batch_size,
            shuffle=False,
            collate_fn=QuestionCollator(self.pad_token_id),
            num_workers=self.hparams.num_workers,
        )
