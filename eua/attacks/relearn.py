"""Relearning attack: fine-tune the unlearned model for a few steps and test whether forgotten answers return.

TOFU stores 20 questions per author in consecutive rows. The forget rows split per author: the
first half of each author's questions is the training data (``forget_half``), the second half is
the evaluation set. With ``retain`` the model trains on retain rows only, which tests whether
unrelated fine-tuning brings the forget answers back. Either way the evaluation uses the held-out
half, so a gain there is knowledge that came back, not knowledge relearned from the same rows.

The loss is the answer-token NLL (the SFT objective), minimised with AdamW at a constant learning rate.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eua.data.datamodule import QUESTIONS_PER_AUTHOR
from eua.data.datasets import QACollator, QADataset
from eua.data.tofu import DataError
from eua.objectives.base import mean_nll

log = logging.getLogger(__name__)

SOURCES = ("forget_half", "retain")


def split_authors(
    rows: Sequence[dict[str, Any]], questions_per_author: int = QUESTIONS_PER_AUTHOR, split: str = "forget"
) -> tuple[list[int], list[int]]:
    """Return ``(train indices, held-out indices)``: the first and second half of each author's rows."""
    if len(rows) % questions_per_author:
        raise DataError(
            f"split {split!r} has {len(rows)} rows, not a multiple of {questions_per_author} questions per "
            "author, so its authors cannot be halved; use a TOFU forgetNN split"
        )
    half = questions_per_author // 2
    train = [index for index in range(len(rows)) if index % questions_per_author < half]
    held_out = [index for index in range(len(rows)) if index % questions_per_author >= half]
    return train, held_out


def relearn(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    steps: int = 30,
    learning_rate: float = 1e-5,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
) -> tuple[PreTrainedModel, list[float]]:
    """Fine-tune a copy of ``model`` for ``steps`` optimizer steps on ``rows``; return it and the losses."""
    if steps < 1:
        raise ValueError(f"relearn steps must be at least 1, got {steps}")
    if not rows:
        raise DataError("the relearning set is empty; check the forget split and relearn.source")

    attacked = copy.deepcopy(model).train()
    device = next(attacked.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        QADataset(rows, tokenizer, max_length),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=QACollator(pad),
        generator=generator,
    )
    optimizer = torch.optim.AdamW(attacked.parameters(), lr=learning_rate, weight_decay=0.0)

    losses: list[float] = []
    while len(losses) < steps:
        for batch in loader:
            logits = attacked(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            loss = mean_nll(logits, batch["labels"].to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite relearning loss at step {len(losses)}; lower relearn.learning_rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break

    log.info("Relearned for %d steps on %d rows: loss %.3f -> %.3f", steps, len(rows), losses[0], losses[-1])
    return attacked.eval(), losses
