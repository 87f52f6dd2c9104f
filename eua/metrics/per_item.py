"""A torchmetric that gathers per-item score vectors across processes, each item counted once.

Distributed samplers pad the last batch by repeating items, so values are keyed by the item's
dataset index and duplicates are dropped after the cross-process ``cat``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class PerItemScores(Metric):
    """Collects ``{field: value}`` per item; ``compute`` returns each field ordered by item index."""

    full_state_update = False

    def __init__(self, fields: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.fields = tuple(fields)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, scores: dict[str, Tensor]) -> None:
        missing = set(self.fields) - set(scores)
        if missing:
            raise KeyError(f"scores lack the fields {sorted(missing)}")
        self.index.append(index.long().reshape(-1))
        self.values.append(torch.stack([scores[name].float().reshape(-1) for name in self.fields], dim=1))

    def compute(self) -> dict[str, Tensor]:
        # After a cross-process sync, torchmetrics has already concatenated the lists into tensors.
        if isinstance(self.index, list) and not self.index:
            return {"index": torch.empty(0, dtype=torch.long), **{name: torch.empty(0) for name in self.fields}}
        index = dim_zero_cat(self.index)
        values = dim_zero_cat(self.values)

        unique, first = _first_occurrence(index)
        values = values[first]
        result = {"index": unique}
        result.update({name: values[:, column] for column, name in enumerate(self.fields)})
        return result


def _first_occurrence(index: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique indices and the position of each one's first occurrence."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    return sorted_index[keep], order[keep]
