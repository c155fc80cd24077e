"""The identity LoRA: its layout, a fresh one for training, and the switch between the passes.

Pass 1 runs with the LoRA off, pass 2 with it on; both switches restore the previous state when
the block ends, also when it raises or is interrupted. The caller serialises runs (the facade
holds a lock): the switch changes the shared UNet.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

LORA_ADAPTER = "cradle2cane"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet attention projections (released layout)


def tuner_layers(unet: torch.nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def lora_is_enabled(unet: torch.nn.Module) -> bool:
    layers = tuner_layers(unet)
    return bool(layers) and not layers[0].disable_adapters


def add_lora(unet: torch.nn.Module, rank: int, alpha: float, targets: Sequence[str] = LORA_TARGETS,
             adapter_name: str = LORA_ADAPTER, b_std: float = 0.0):
    """Attach a fresh PEFT LoRA (A Gaussian, B zero: the UNet is unchanged) and return its config.

    ``b_std > 0`` draws B from N(0, b_std) with torch's global generator, in parameter order: a LoRA
    that does change the UNet, for test and benchmark models.
    """
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    unet.add_adapter(config, adapter_name=adapter_name)
    if b_std > 0:
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, b_std)
    return config


@contextlib.contextmanager
def lora_enabled(unet: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Switch the UNet's LoRA on or off for a block, restoring every layer's state afterwards."""
    layers = tuner_layers(unet)
    previous = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer.enable_adapters(enabled)
        yield
    finally:
        for layer, was_disabled in zip(layers, previous):
            layer.enable_adapters(not was_disabled)


@contextlib.contextmanager
def lora_fused(unet: torch.nn.Module) -> Iterator[None]:
    """Run a block with the LoRA folded into the base weights: one matmul per projection instead of
    three, the same result up to float rounding.

    Each targeted layer gets a new weight ``W + scale * B @ A`` for the block and its own ``W``
    object back afterwards (also on errors), so the base weights are restored bit for bit however
    often this runs (merging and unmerging in place would drift by a rounding error per call). The
    fused copies exist only during the block. Inference only: the fused weights carry no gradient.
    """
    swapped: list[tuple[torch.nn.Module, torch.nn.Parameter]] = []
    try:
        with torch.no_grad(), lora_enabled(unet, False):
            for layer in tuner_layers(unet):
                base = layer.get_base_layer()
                original = base.weight
                delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters)
                base.weight = torch.nn.Parameter(original + delta.to(original.dtype), requires_grad=False)
                swapped.append((base, original))
            yield
    finally:
        for base, original in swapped:
            base.weight = original
