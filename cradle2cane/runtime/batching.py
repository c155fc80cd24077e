"""How many rows each component takes per call, by device: the one place for that rule.

``batch_size`` (the caller's cap, default 8) bounds every call. On a GPU batching pays up to that
cap. On the CPU it pays for the UNet, but for the VAE only while the batch is small enough for the
processor's caches; above that a batch costs more per image than one image at a time (a batch of
8 about 1.8x per image for the full-size VAE at 512 px). The VAE's largest activations are at full
resolution, ``block_out_channels[0]`` channels wide, so the rule sizes the VAE batch by that tensor,
counted in elements: CPU kernels compute half-precision convolutions in float32 on processors
without native bf16/fp16, so the storage dtype does not shrink the working set.

``cradle2cane bench`` checks the rule on any machine: its floor probe times every component alone
at each batch size and reports the cheapest batch beside the one chosen here (docs/performance.md
has the measured tables).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CPU_VAE_ACTIVATION_ELEMENTS = 2 * 2**20
"""On the CPU the VAE batch grows only while batch x first-block channels x height x width stays
within this many elements (8 MiB in float32); at least one image per call."""


@dataclass(frozen=True)
class BatchSizes:
    """Rows per call for each component."""

    unet: int
    vae: int


def vae_activation_elements(vae: torch.nn.Module, height: int, width: int) -> int:
    """Elements of one full-resolution activation of ``vae`` for one ``height`` x ``width`` image."""
    return int(vae.config.block_out_channels[0]) * height * width


def vae_batch_size(vae: torch.nn.Module, device: torch.device | str, batch_size: int, height: int,
                   width: int) -> int:
    """Rows per VAE encode or decode of ``height`` x ``width`` images under the cap ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if torch.device(device).type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_VAE_ACTIVATION_ELEMENTS // vae_activation_elements(vae, height, width)))


def batch_sizes(vae: torch.nn.Module, device: torch.device | str, batch_size: int, resolution: int) -> BatchSizes:
    """The rows per call of each component for square images of ``resolution`` pixels."""
    return BatchSizes(unet=batch_size, vae=vae_batch_size(vae, device, batch_size, resolution, resolution))
