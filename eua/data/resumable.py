"""A training DataLoader that resumes mid-epoch at the batch where a checkpoint was saved.

The order of epoch ``e`` is ``torch.randperm(n)`` drawn from a generator seeded with
``seed + e``, so it depends on nothing but the seed and the epoch. The loader counts the batches it
has handed to the training loop; Lightning stores that count in every checkpoint through the
``state_dict`` / ``load_state_dict`` protocol of its ``CombinedLoader``. After a restart, the first
epoch skips the batches already trained on, so a resumed run gets the same batches in the same
order as an uninterrupted one.

``set_epoch`` is passed on to the dataset when it has one (``PairedDataset`` draws its random
retain partners from ``(seed, epoch, index)``), because Lightning calls ``set_epoch`` on the
sampler at the start of every epoch, including the epoch it resumes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch, seeded by ``seed + epoch``, that can start at an offset."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_dataset_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_dataset_epoch):
            set_dataset_epoch(epoch)

    def __len__(self) -> int:
        # The full epoch, also while resuming: Lightning sizes the epoch by the loader's length.
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        start, self.start = self.start, 0
        yield from order[start:]


class ResumableDataLoader(DataLoader):
    """A shuffled DataLoader whose position inside the epoch is saved in Lightning checkpoints.

    NOTE: tested with one process only. With several devices Lightning wraps the sampler in a
    ``DistributedSamplerWrapper``, and the mid-epoch skip has not been checked there.

    Args:
        dataset: map-style dataset.
        batch_size: examples per batch.
        collate_fn: builds a batch from a list of items.
        num_workers: DataLoader worker processes.
        seed: seed of the per-epoch order.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        self.seed = seed
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(dataset, seed),
            collate_fn=collate_fn,
            num_workers=num_workers,
        )
        self.batches_yielded = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        # Batches never straddle the offset because it is a whole number of batches.
        skip, self._resume_at = self._resume_at, 0
        self.sampler.start = skip * self.batch_size
        self.batches_yielded = skip
        for batch in super().__iter__():
            self.batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_yielded": self.batches_yielded, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"the checkpoint was trained with data.seed={state_dict['seed']}, this run has {self.seed}; "
                "resume with the same data.seed"
            )
        batches = state_dict.get("batches_yielded", 0)
        # A checkpoint saved after the last batch of an epoch resumes at the start of the next one.
        self._resume_at = batches if 0 < batches < len(self) else 0
        self.sampler.set_epoch(state_dict.get("epoch", 0))
