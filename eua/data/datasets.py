"""Torch datasets and collators for finetuning, paired unlearning batches and evaluation.

- ``QADataset``: encoded question-answer pairs, one per row.
- ``PairedDataset``: one item per forget row, ``{"forget", "retain", "refusal"}``. The retain pair
  is drawn at random from the retain set, and the refusal pair is the forget question answered by
  a refusal string chosen deterministically from the ``idontknow`` set.
- ``EvalDataset``: one item per evaluation row with the answer, the paraphrased answer, the
  perturbed answers and the bare prompt for generation.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from eua.data.formatting import IGNORE_INDEX, EncodedPair, encode_pair, encode_prompt


class QADataset(Dataset):
    """Question-answer rows encoded once, up front."""

    def __init__(
        self, rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> None:
        self.rows = list(rows)
        self.pairs = [encode_pair(tokenizer, row["question"], row["answer"], max_length) for row in self.rows]

    @property
    def truncated_count(self) -> int:
        return sum(pair.truncated for pair in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        return {"input_ids": pair.input_ids, "labels": pair.labels, "index": index}


class PairedDataset(Dataset):
    """Forget rows, each paired with a random retain row and a refusal answer to the forget question."""

    def __init__(
        self,
        forget: QADataset,
        retain: QADataset,
        refusal: QADataset,
        seed: int = 0,
    ) -> None:
        if len(refusal) != len(forget):
            raise ValueError(f"refusal set has {len(refusal)} rows, forget set {len(forget)}; they must match")
        self.forget = forget
        self.retain = retain
        self.refusal = refusal
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw other retain partners in the next epoch (called by the DataModule)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, index: int) -> dict[str, dict[str, Any]]:
        # Seeded by (seed, epoch, index), so the pairing is the same in every worker and on resume.
        retain_index = random.Random(hash((self.seed, self.epoch, index))).randrange(len(self.retain))
        return {
            "forget": self.forget[index],
            "retain": self.retain[retain_index],
            "refusal": self.refusal[index],
        }


def refusal_rows(forget_rows: Sequence[dict[str, Any]], refusals: Sequence[str]) -> list[dict[str, str]]:
    """Pair each forget question with a refusal string chosen by a hash of the question."""
    if not refusals:
        raise ValueError("the refusal answer set is empty; idontknow.jsonl needs at least one line")
    return [
        {"question": row["question"], "answer": refusals[zlib.crc32(row["question"].encode()) % len(refusals)]}
        for row in forget_rows
    ]


class EvalDataset(Dataset):
    """Evaluation rows with every sequence the TOFU metrics score."""

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        correct_field: str = "answer",
    ) -> None:
        self.rows = list(rows)
        self.items = []
        for row in self.rows:
            question = row["question"]
            correct = row.get(correct_field) or row["answer"]
            self.items.append(
                {
                    "answer": encode_pair(tokenizer, question, row["answer"], max_length),
                    "correct": encode_pair(tokenizer, question, correct, max_length),
                    "perturbed": [encode_pair(tokenizer, question, text, max_length) for text in row.get("perturbed_answer", [])],
                    "prompt_ids": encode_prompt(tokenizer, question),
                    "answer_text": row["answer"],
                }
            )

    @property
    def truncated_count(self) -> int:
        """Rows whose answer, correct answer or any perturbed answer was cut to ``max_length``."""
        return sum(
            item["answer"].truncated or item["correct"].truncated or any(p.truncated for p in item["perturbed"])
            for item in self.items
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.items[index], "index": index}


def pad_pairs(pairs: Sequence[dict[str, Any] | EncodedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded pairs into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    input_ids = [p.input_ids if isinstance(p, EncodedPair) else p["input_ids"] for p in pairs]
    labels = [p.labels if isinstance(p, EncodedPair) else p["labels"] for p in pairs]
    width = max(len(ids) for ids in input_ids)

    batch = {
        "input_ids": torch.full((len(pairs), width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(pairs), width), dtype=torch.long),
        "labels": torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long),
    }
    for row, (ids, row_labels) in enumerate(zip(input_ids, labels)):
        batch["input_ids"][row, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][row, : len(ids)] = 1
        batch["labels"][row, : len(ids)] = torch.tensor(row_labels)
    return batch


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class QACollator:
    """Collates ``QADataset`` items into one padded batch with an ``index`` tensor."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_pairs(items, self.pad_token_id)
        batch["index"] = torch.tensor([item["index"] for item in items])
        return batch


class PairedCollator:
    """Collates ``PairedDataset`` items into ``{"forget": batch, "retain": batch, "refusal": batch}``."""

    def __init__(self, pad_token_id: int) -> None:
        self.collate_part = QACollator(pad_token_id)

    def __call__(self, items: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, torch.Tensor]]:
        return {part: self.collate_part([item[part] for item in items]) for part in ("forget", "retain", "refusal")}


class EvalCollator:
    """Collates ``EvalDataset`` items.

    ``perturbed`` holds ``B * P`` rows, item-major, with ``perturbed_count`` giving ``P`` per item,
    so that items with different numbers of perturbed answers can share a batch.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        perturbed = [pair for item in items for pair in item["perturbed"]]
        batch: dict[str, Any] = {
            "index": torch.tensor([item["index"] for item in items]),
            "answer": pad_pairs([item["answer"] for item in items], self.pad_token_id),
            "correct": pad_pairs([item["correct"] for item in items], self.pad_token_id),
            "prompt": left_pad([item["prompt_ids"] for item in items], self.pad_token_id),
            "perturbed_count": torch.tensor([len(item["perturbed"]) for item in items]),
            "answer_text": [item["answer_text"] for item in items],
        }
        if perturbed:
            batch["perturbed"] = pad_pairs(perturbed, self.pad_token_id)
        return batch
