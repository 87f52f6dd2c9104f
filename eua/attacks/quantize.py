"""Weight-only round-to-nearest (RTN) quantization, dequantized back to float for evaluation.

Small weight updates, such as those of an unlearning run, can fall below the quantization step and
vanish when the model is quantized, so the quantized model may answer like the original one.

- ``int8``: symmetric, one scale per output channel (row of ``W``):
  ``s = max|W_row| / 127``, ``q = round(W / s)`` in ``[-127, 127]``, ``W' = s * q``.
- ``int4``: asymmetric, one scale and zero point per group of ``group_size`` input columns:
  ``s = (max - min) / 15``, ``z = round(-min / s)``, ``q = round(W / s) + z`` in ``[0, 15]``,
  ``W' = s * (q - z)``.

In both cases ``|W - W'| <= s / 2`` for every weight, because no code is clamped: the codes of the
group's minimum and maximum are ``0``/``-127`` and ``15``/``127`` after rounding. Only the weights of
``nn.Linear`` layers change; embeddings, norms and, by default, ``lm_head`` stay in float.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

METHODS = ("int8", "int4")


@dataclass
class QuantizedWeight:
    """Integer codes of one weight matrix with their scales (and zero points for ``int4``).

    ``codes`` has shape ``[out, groups, group_size]``; ``scale`` and ``zero`` have shape
    ``[out, groups, 1]``. ``in_features`` is the width before padding to whole groups.
    """

    codes: Tensor
    scale: Tensor
    zero: Tensor
    in_features: int

    def dequantize(self) -> Tensor:
        values = (self.codes.float() - self.zero) * self.scale
        return values.reshape(values.shape[0], -1)[:, : self.in_features]

    def step(self) -> Tensor:
        """Return the quantization step of every weight, shape ``[out, in_features]``."""
        steps = self.scale.expand_as(self.codes)
        return steps.reshape(steps.shape[0], -1)[:, : self.in_features]


def _grouped(weight: Tensor, group_size: int) -> Tensor:
    """Reshape ``[out, in]`` to ``[out, groups, group_size]``, padding the last group with zeros."""
    out_features, in_features = weight.shape
    padding = -in_features % group_size
    if padding:
        weight = torch.nn.functional.pad(weight, (0, padding))
    return weight.reshape(out_features, -1, group_size)


def quantize_int8(weight: Tensor) -> QuantizedWeight:
    """Quantize to symmetric int8 with one scale per output channel."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    values = weight.detach().float()[:, None, :]
    scale = values.abs().amax(dim=-1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row keeps code 0
    codes = torch.round(values / scale).clamp(-127, 127).to(torch.int8)
    return QuantizedWeight(codes=codes, scale=scale, zero=torch.zeros_like(scale), in_features=weight.shape[1])


def quantize_groupwise(weight: Tensor, bits: int = 4, group_size: int = 128) -> QuantizedWeight:
    """Quantize to asymmetric ``bits``-bit codes with one scale and zero point per group of inputs."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    levels = 2**bits - 1
    values = _grouped(weight.detach().float(), group_size)

    low = values.amin(dim=-1, keepdim=True)
    high = values.amax(dim=-1, keepdim=True)
    scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group is stored exactly
    zero = torch.round(-low / scale)
    # round(w / s) + round(-min / s) lies in [0, levels] already; the clamp only guards float ties.
    codes = (torch.round(values / scale) + zero).clamp(0, levels).to(torch.uint8)
    return QuantizedWeight(codes=codes, scale=scale, zero=zero, in_features=weight.shape[1])


def quantize_weight(weight: Tensor, method: str, group_size: int = 128) -> QuantizedWeight:
    if method == "int8":
        return quantize_int8(weight)
    if method == "int4":
        return quantize_groupwise(weight, bits=4, group_size=group_size)
    raise ValueError(f"unknown quantization method {method!r}; choose from {list(METHODS)}")


@torch.no_grad()
def quantize_model(
    model: nn.Module, method: str, group_size: int = 128, skip: Sequence[str] = ("lm_head",)
) -> dict[str, QuantizedWeight]:
    """Replace every ``nn.Linear`` weight (except modules named in ``skip``) by its dequantized RTN copy.

    Returns ``{module name: QuantizedWeight}``. The model is changed in place.
    """
    quantized: dict[str, QuantizedWeight] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".")[-1] in skip:
            continue
        result = quantize_weight(module.weight, method, group_size)
        module.weight.copy_(result.dequantize().to(module.weight.dtype))
        quantized[name] = result
    if not quantized:
        raise ValueError(f"the model has no nn.Linear layer outside {list(skip)}; nothing to quantize")
    log.info("Quantized %d linear layers with %s round-to-nearest", len(quantized), method)
    return quantized
