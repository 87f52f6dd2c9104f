"""Sharding helpers for Lightning's FSDP strategies.

FSDP2 (``ModelParallelStrategy``) shards what ``configure_model`` passes to ``fully_shard``: each
decoder layer (the classes a transformers model lists in ``_no_split_modules``), then the whole
model, so one layer's full weights exist at a time. FSDP1 (``FSDPStrategy``) wraps by its
``auto_wrap_policy`` instead (see ``configs/trainer/fsdp.yaml``).
"""

from __future__ import annotations

import logging

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from torch import nn

log = logging.getLogger(__name__)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Return the modules of ``model`` whose class a transformers model names in ``_no_split_modules``."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(model).__name__} lists no _no_split_modules; cannot tell its decoder layers apart")
    return [module for module in model.modules() if type(module).__name__ in names]


def fully_shard_layers(model: nn.Module, mesh) -> None:
    """Apply FSDP2's ``fully_shard`` to every decoder layer of ``model`` and then to ``model``."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    # Lightning calls configure_model again for each run (fit, then test) on the same module.
    if any(isinstance(parameter, DTensor) for parameter in model.parameters()):
        return

    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    log.info("FSDP2: sharded %d decoder layers over %d processes", len(layers), mesh.size())


def is_sharded_strategy(strategy: Strategy) -> bool:
    """Return whether ``strategy`` splits the parameters across processes (FSDP, FSDP2, DeepSpeed)."""
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy))
