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


class ItemMetric(Metric):
    """Base of the metrics over per-item values, keyed by ``(group, dataset index)``.

    Subclasses name their ``groups`` (``("forget", "holdout")`` for a two-sample score) and value
    ``columns``, call ``_add`` in ``update`` and read ``_gathered()`` in ``compute``, which returns
    each group's columns ordered by index with every item once, whatever the process split.
    Values are kept in float64 so that the distributed result equals the single-process one.
    """

    full_state_update = False
    groups: tuple[str, ...] = ("items",)
    columns: tuple[str, ...] = ("value",)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("group", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def _add(self, group: str, index: Tensor, **columns: Tensor) -> None:
        if group not in self.groups:
            raise ValueError(f"{type(self).__name__}: unknown group {group!r}; choose from {self.groups}")
        if set(columns) != set(self.columns):
            raise KeyError(f"{type(self).__name__}: expected the columns {self.columns}, got {sorted(columns)}")
        index = torch.as_tensor(index).long().reshape(-1)
        stacked = torch.stack(
            [torch.as_tensor(columns[name]).detach().to(torch.float64).reshape(-1) for name in self.columns], dim=1
        )
        if len(stacked) != len(index):
            raise ValueError(f"{type(self).__name__}: {len(index)} indices for {len(stacked)} values")
        self.index.append(index.to(self.device))
        self.group.append(torch.full_like(index, self.groups.index(group)).to(self.device))
        self.values.append(stacked.to(self.device))

    def _gathered(self) -> dict[str, dict[str, Tensor]]:
        result = {name: {column: torch.empty(0, dtype=torch.float64) for column in self.columns} for name in self.groups}
        if isinstance(self.index, list) and not self.index:
            return result
        index = dim_zero_cat(self.index)
        group = dim_zero_cat(self.group)
        values = dim_zero_cat(self.values)
        for number, name in enumerate(self.groups):
            chosen = group == number
            _, first = _first_occurrence(index[chosen])
            rows = values[chosen][first].cpu()
            result[name] = {column: rows[:, position] for position, column in enumerate(self.columns)}
        return result
