"""LoRA adapters through ``peft``: train a low-rank update ``W + (alpha / r) * B A`` and freeze ``W``.

Only the adapter matrices ``A`` and ``B`` get gradients. With the adapters switched off
(``peft``'s ``disable_adapter()`` context) the model is the unchanged base, so an objective that
needs a frozen reference model reads it from the same weights instead of holding a second copy.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class LoraSpec:
    """LoRA settings.

    Args:
        r: rank of the update.
        alpha: scale numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get adapters (Llama attention and MLP by
            default); ``all-linear`` selects every linear layer except the output head.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


# Checkpoints store the module hyperparameters, this spec among them (numbers and strings only).
torch.serialization.add_safe_globals([LoraSpec])


def apply_lora(model: nn.Module, spec: LoraSpec, gradient_checkpointing: bool = False) -> nn.Module:
    """Wrap ``model`` in a ``peft`` model whose only trainable parameters are the adapters."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("model.lora needs the peft package: pip install 'eua[lora]'") from error
    if spec.r < 1:
        raise ValueError(f"model.lora.r must be at least 1, got {spec.r}")

    if gradient_checkpointing:
        # The frozen embeddings output tensors without gradients. Reentrant checkpointed blocks
        # then see no input that requires a gradient and drop the adapters' gradients.
        model.enable_input_require_grads()
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(f"model.lora.target_modules {spec.target_modules!r}: {error}") from error

    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA r=%d alpha=%d: %d of %d parameters trainable (%.2f%%)", spec.r, spec.alpha, trainable, total, 100 * trainable / total)
    return peft_model


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def base_model_context(model: nn.Module) -> AbstractContextManager:
    """Context in which ``model`` runs as its adapter-free base (a no-op for a plain model)."""
    return model.disable_adapter() if is_lora(model) else nullcontext()
