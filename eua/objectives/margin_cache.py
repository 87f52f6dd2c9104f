"""Reference margins at answer tokens: computed from the frozen reference in chunks, cached per example.

The EUA margins ``(m_in, m_out)`` of a token depend only on the frozen reference model, the margin
settings and the example's token ids, so :class:`MarginCache` keeps them per answer token (float32,
on CPU), keyed by ``(part, dataset index)``. Every entry stores a hash of its token ids and answer
mask, and the cache stores a fingerprint of the tokenizer, ``max_length``, the reference weights
and the margin settings. When the fingerprint changes, the whole cache is rebuilt; when one
entry's hash differs, that entry is recomputed. Both log a message.

The reference logits are only needed at answer positions: for a plain causal LM (logits equal the
output embedding applied to the last hidden state) the reference runs its decoder once, gathers the
answer positions' hidden states and applies the output layer one chunk of positions at a time.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from eua.data.formatting import IGNORE_INDEX
from eua.energy import MarginFill, chunk_positions, margins_of_chunks

log = logging.getLogger(__name__)

Part = dict[str, Tensor]


def answer_mask(labels: Tensor) -> Tensor:
    """Mark the positions ``t`` whose logits predict an answer token ``t + 1``: shape ``[B, L]``, last column false."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def answer_targets(labels: Tensor) -> Tensor:
    """Return the answer tokens in the row-major order of ``answer_mask(labels)``: shape ``[N]``."""
    shifted = labels[:, 1:]
    return shifted[shifted != IGNORE_INDEX]


def _plain_output_head(model: nn.Module) -> bool:
    """Tell whether ``logits = output_embeddings(base_model(...).last_hidden_state)`` holds for ``model``."""
    config = getattr(model, "config", None)
    for scaling in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, scaling, None) not in (None, 1, 1.0):
            return False
    get_head = getattr(model, "get_output_embeddings", None)
    base = getattr(model, "base_model", model)
    return callable(get_head) and get_head() is not None and base is not model


@torch.no_grad()
def reference_answer_logits(model: nn.Module, part: Part, mask: Tensor, chunk_size: int) -> Iterator[Tensor]:
    """Yield the reference logits at the true positions of ``mask``, ``chunk_size`` positions at a time."""
    inputs = {"input_ids": part["input_ids"], "attention_mask": part["attention_mask"], "use_cache": False}
    if _plain_output_head(model):
        hidden = model.base_model(**inputs).last_hidden_state[mask]
        head = model.get_output_embeddings()
        for start in range(0, len(hidden), chunk_size):
            yield head(hidden[start : start + chunk_size])
        return

    # Other heads (soft-capped or scaled logits) go through the full forward pass.
    logits = model(**inputs).logits
    rows, cols = mask.nonzero(as_tuple=True)
    for start in range(0, len(rows), chunk_size):
        yield logits[rows[start : start + chunk_size], cols[start : start + chunk_size]]


def compute_margins(
    model: nn.Module,
    part: Part,
    mask: Tensor,
    fraction: float,
    temperature: float,
    fill: MarginFill,
    chunk_size: int | None = None,
) -> Tensor:
    """Return the reference ``(m_in, m_out)`` at the true positions of ``mask``: float32, shape ``[N, 2]``."""
    vocab_size = model.get_output_embeddings().weight.shape[0] if _plain_output_head(model) else model.config.vocab_size
    chunk = chunk_positions(vocab_size, chunk_size)
    retain, forget = margins_of_chunks(
        reference_answer_logits(model, part, mask, chunk), vocab_size, fraction, temperature, fill, mask.device
    )
    return torch.stack([retain, forget], dim=-1)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Return a hash of the tokenizer's class, name, size and vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.blake2b(repr(vocab).encode(), digest_size=8).hexdigest()
    return f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{len(tokenizer)}:{digest}"


@torch.no_grad()
def weights_fingerprint(model: nn.Module, samples: int = 256) -> str:
    """Return a hash of every parameter's name, shape and ``samples`` evenly strided values.

    NOTE: a sample, so two models that differ only in unsampled weights get the same fingerprint.
    """
    digest = hashlib.blake2b(digest_size=8)
    for name, parameter in sorted(model.named_parameters()):
        flat = parameter.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples)][:samples].float().cpu()
        digest.update(f"{name}:{tuple(parameter.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


class MarginCache:
    """Reference margins per answer token, keyed by ``(part, dataset index)``, on CPU in float32.

    Call :meth:`bind` with the current fingerprint before use, then :meth:`margins` per batch part.
    ``hits`` and ``misses`` count rows served from the cache and rows computed.
    """

    def __init__(self) -> None:
        self.fingerprint: dict[str, str] | None = None
        self.entries: dict[tuple[str, int], tuple[bytes, Tensor]] = {}
        self.hits = 0
        self.misses = 0
        self._bound_reference: weakref.ref | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def bind(self, fingerprint: dict[str, str]) -> None:
        """Use the cache for ``fingerprint``; entries made for another fingerprint are dropped with a log message."""
        if self.fingerprint is not None and fingerprint != self.fingerprint and self.entries:
            changed = sorted(key for key in fingerprint.keys() | self.fingerprint.keys() if fingerprint.get(key) != self.fingerprint.get(key))
            log.info(
                "Margin cache is stale (%s changed); dropping %d entries and computing the margins again",
                ", ".join(changed),
                len(self.entries),
            )
            self.entries.clear()
        self.fingerprint = dict(fingerprint)

    def is_bound_to(self, reference: nn.Module) -> bool:
        return self._bound_reference is not None and self._bound_reference() is reference

    def bind_module(
        self, module: Any, reference: nn.Module, fraction: float, temperature: float, fill: MarginFill
    ) -> None:
        """Bind to the fingerprint of ``module``'s tokenizer, ``reference``, data ``max_length`` and the margin settings."""
        self.bind(
            {
                "tokenizer": tokenizer_fingerprint(module.tokenizer),
                "max_length": str(_max_length(module)),
                "reference": weights_fingerprint(reference),
                "margins": f"fraction={fraction}, temperature={temperature}, fill={fill}",
            }
        )
        self._bound_reference = weakref.ref(reference)

    def margins(self, name: str, part: Part, mask: Tensor, compute: Any) -> Tensor:
        """Return ``[N, 2]`` margins at the true positions of ``mask``; ``compute(part, mask)`` fills the missing rows."""
        if "index" not in part:
            raise KeyError(f"batch part {name!r} has no 'index' tensor; the margin cache keys entries by dataset index")
        indices = part["index"].tolist()
        counts = mask.sum(dim=1).tolist()
        hashes = _row_hashes(part)

        found: list[Tensor | None] = []
        stale = 0
        for index, row_hash in zip(indices, hashes):
            entry = self.entries.get((name, index))
            if entry is not None and entry[0] != row_hash:
                stale += 1
                entry = None
            found.append(None if entry is None else entry[1])
        if stale:
            log.info("Margin cache: %d %s entries were computed for other token ids; computing them again", stale, name)

        missing = [row for row, margins in enumerate(found) if margins is None]
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            rows = torch.tensor(missing, device=mask.device)
            width = int(part["attention_mask"][rows].sum(dim=1).max())
            subset = {key: part[key][rows, :width] for key in ("input_ids", "attention_mask", "labels")}
            computed = compute(subset, mask[rows, :width]).float().cpu()
            for row, margins in zip(missing, computed.split([counts[row] for row in missing])):
                self.entries[(name, indices[row])] = (hashes[row], margins)
                found[row] = margins

        return torch.cat(found).to(mask.device, non_blocking=True)


def _row_hashes(part: Part) -> list[bytes]:
    input_ids = part["input_ids"].cpu()
    labels = part["labels"].cpu()
    lengths = part["attention_mask"].sum(dim=1).tolist()
    hashes = []
    for row, length in enumerate(lengths):
        digest = hashlib.blake2b(input_ids[row, :length].numpy().tobytes(), digest_size=16)
        digest.update((labels[row, :length] != IGNORE_INDEX).numpy().tobytes())
        hashes.append(digest.digest())
    return hashes


def _max_length(module: Any) -> int | None:
    try:
        datamodule = module.trainer.datamodule
    except (RuntimeError, AttributeError):
        return None
    hparams = getattr(datamodule, "hparams", {})
    return hparams.get("max_length") if hasattr(hparams, "get") else None
