"""Access to the decoder layers of a Hugging Face causal LM and to their outputs.

Layer ``i`` (0-based) is ``model.get_decoder().layers[i]``; its output is the residual stream
after that block, before the final norm. For layers below the last, this equals
``outputs.hidden_states[i + 1]`` of a forward pass with ``output_hidden_states=True``.
"""

from __future__ import annotations

from torch import Tensor, nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the decoder blocks of ``model`` (``model.get_decoder().layers``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no decoder layer list at model.get_decoder().layers; "
            "objectives that read hidden states support decoder-only Hugging Face models such as Llama"
        )
    return layers


def check_layer(model: nn.Module, layer: int) -> int:
    """Return ``layer`` if it indexes a decoder layer of ``model``, else raise ``IndexError``."""
    count = len(decoder_layers(model))
    if not 0 <= layer < count:
        raise IndexError(f"layer {layer} is out of range: the model has {count} decoder layers (0 to {count - 1})")
    return layer


def layer_output(model: nn.Module, part: dict[str, Tensor], layer: int) -> Tensor:
    """Run ``model`` on ``part`` and return the output ``[B, L, H]`` of decoder layer ``layer``.

    A forward hook captures the output, so gradients flow to the layer's parameters when grad is
    enabled. The rest of the forward pass still runs.
    """
    block = decoder_layers(model)[check_layer(model, layer)]
    captured: list[Tensor] = []

    def keep_output(_module: nn.Module, _inputs: tuple, output: Tensor | tuple) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = block.register_forward_hook(keep_output)
    try:
        model(input_ids=part["input_ids"], attention_mask=part["attention_mask"])
    finally:
        handle.remove()
    return captured[0]
