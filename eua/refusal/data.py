"""Questions to answer at inference: a JSON Lines file in, left-padded prompt batches out.

Each line of the input file is a JSON object with a non-empty string ``question``. Every other
field (an ``id``, a reference ``answer``) is passed through to the prediction record unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from eua.data.datasets import left_pad
from eua.data.formatting import encode_prompt
from eua.data.tofu import DataError


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """Read the question rows of a JSON Lines file; an error names the file, line and problem."""
    source = Path(path)
    if not source.is_file():
        raise DataError(f"question file {str(source)!r} not found; pass a JSON Lines file with one {{\"question\": ...}} per line")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{source}: not valid UTF-8 at byte {error.start}; re-save the file as UTF-8") from error

    rows = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{source}:{line_number}: invalid JSON at column {error.colno} ({error.msg}); "
                f"each line must be one JSON object such as {{\"question\": \"...\"}}"
            ) from error
        if not isinstance(row, dict):
            raise DataError(f"{source}:{line_number}: expected a JSON object, got {type(row).__name__}")
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{source}:{line_number}: field 'question' must be a non-empty string, got {question!r}")
        rows.append(row)

    if not rows:
        raise DataError(f"{source}: no questions; the file needs at least one {{\"question\": ...}} line")
    return rows


class QuestionDataset(Dataset):
    """Question rows with their encoded prompts."""

    def __init__(self, rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> None:
        self.rows = list(rows)
        self.prompts = [encode_prompt(tokenizer, row["question"]) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"row": self.rows[index], "prompt_ids": self.prompts[index], "index": index}


class QuestionCollator:
    """Left-pads prompts for generation and keeps the rows: ``{"prompt", "rows", "questions", "index"}``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {
            "prompt": left_pad([item["prompt_ids"] for item in items], self.pad_token_id),
            "rows": [item["row"] for item in items],
            "questions": [item["row"]["question"] for item in items],
            "index": torch.tensor([item["index"] for item in items]),
        }
