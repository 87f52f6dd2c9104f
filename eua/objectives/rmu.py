"""Representation Misdirection for Unlearning (Li et al. 2024, the WMDP paper, arXiv:2403.03218).

    L = gamma * mean_t ||h_theta,t(forget) - c * u||^2 / H + alpha * mean_t ||h_theta,t(retain) - h_ref,t(retain)||^2 / H

``h`` is the output of decoder layer ``layer`` at answer-token positions ``t``, ``H`` the hidden
size, and ``u`` a fixed random direction: uniform in ``[0, 1)`` per coordinate, scaled to unit
norm, drawn once from ``seed``. Only the parameters named ``parameter_names`` in the decoder
layers ``trainable_layers`` train; the rest of the model stays frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from eua.models.layers import check_layer, decoder_layers
from eua.objectives.base import Batch, Objective, ObjectiveOutput, masked_mean


class RMU(Objective):
    """Steer forget activations of one layer to a scaled random direction, keep retain activations.

    The defaults are open-unlearning's for Llama-3.2-1B on TOFU: layer 7, the MLP down-projections
    of layers 5 to 7, ``c = 300`` and ``alpha = 1000``. Other models need other values.

    Args:
        layer: decoder layer (0-based) whose output is steered.
        steering_coeff: norm ``c`` of the target direction.
        alpha: weight of the retain activation loss.
        gamma: weight of the forget activation loss.
        trainable_layers: decoder layers whose ``parameter_names`` train; unset takes ``layer``
            and the two layers below it.
        parameter_names: parameter names inside each trainable decoder layer.
        seed: seed of the random direction.
    """

    name = "rmu"
    needs_reference = True

    def __init__(
        self,
        layer: int = 7,
        steering_coeff: float = 300.0,
        alpha: float = 1000.0,
        gamma: float = 1.0,
        trainable_layers: list[int] | None = None,
        parameter_names: Sequence[str] = ("mlp.down_proj.weight",),
        seed: int = 0,
    ) -> None:
        if trainable_layers is None:
            trainable_layers = list(range(max(0, layer - 2), layer + 1))
        if not parameter_names:
            raise ValueError("parameter_names is empty; name at least one parameter, e.g. mlp.down_proj.weight")
        self.layer = layer
        self.steering_coeff = steering_coeff
        self.alpha = alpha
        self.gamma = gamma
        self.trainable_layers = list(trainable_layers)
        self.parameter_names = list(parameter_names)
        self.seed = seed
        self._direction: Tensor | None = None

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Return the parameters that train: ``parameter_names`` in each of ``trainable_layers``."""
        layers = decoder_layers(model)
        parameters = []
        for index in self.trainable_layers:
            block = layers[check_layer(model, index)]
            for name in self.parameter_names:
                try:
                    parameters.append(block.get_parameter(name))
                except AttributeError as error:
                    known = ", ".join(name for name, _ in block.named_parameters())
                    raise ValueError(
                        f"rmu: decoder layer {index} has no parameter {name!r}; its parameters are: {known}"
                    ) from error
        return parameters

    def target(self, hidden_size: int, like: Tensor) -> Tensor:
        """Return the steering target ``c * u`` ``[H]``, drawn once from ``seed``."""
        if self._direction is None or self._direction.numel() != hidden_size:
            generator = torch.Generator().manual_seed(self.seed)
            direction = torch.rand(hidden_size, generator=generator)
            self._direction = direction / direction.norm()
        return (self.steering_coeff * self._direction).to(device=like.device, dtype=torch.float32)

    def __call__(self, module, batch: Batch) -> ObjectiveOutput:
        forget_part, retain_part = batch["forget"], batch["retain"]
        forget_mask = forget_part["labels"] != -100
        retain_mask = retain_part["labels"] != -100

        forget_hidden = module.hidden_states(forget_part, self.layer).float()
        target = self.target(forget_hidden.shape[-1], forget_hidden)
        forget = masked_mean((forget_hidden - target).pow(2).mean(dim=-1), forget_mask)

        retain_hidden = module.hidden_states(retain_part, self.layer).float()
        reference_hidden = module.reference_hidden_states(retain_part, self.layer).float()
        retain = masked_mean((retain_hidden - reference_hidden).pow(2).mean(dim=-1), retain_mask)

        loss = self.gamma * forget + self.alpha * retain
        return ObjectiveOutput(loss, {"forget_mse": forget.detach(), "retain_mse": retain.detach()})
