"""The identity LoRA switch: off for pass 1, on for pass 2, always restored."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def _tuner_layers(unet: torch.nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def lora_is_enabled(unet: torch.nn.Module) -> bool:
    layers = _tuner_layers(unet)
    return bool(layers) and not layers[0].disable_adapters


@contextlib.contextmanager
def lora_enabled(unet: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Switch the UNet's LoRA on or off for a block, restoring every layer's state afterwards,
    also when the block raises or is interrupted."""
    layers = _tuner_layers(unet)
    previous = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer.enable_adapters(enabled)
        yield
    finally:
        for layer, was_disabled in zip(layers, previous):
            layer.enable_adapters(not was_disabled)
