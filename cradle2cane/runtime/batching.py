"""How many rows each component takes per call, by device: the one place for that rule.

``batch_size`` (the user's cap, default 8) bounds every call. On a GPU batching always pays up to
that cap. On the CPU it pays for the UNet, but for the VAE only while one activation of the batch
stays small enough to live in the processor's caches: above that, a batch of 8 cost about 1.8x
more per image than one image at a time (measured with ``cradle2cane bench --profile``, whose
floor probe reports each component's cost per row at every batch size; see docs/performance.md).
The VAE's largest activations are at full resolution, ``block_out_channels[0]`` channels wide, so
the rule sizes the VAE batch by that tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CPU_VAE_ACTIVATION_BYTES = 8 * 2**20
"""On the CPU, the VAE batch grows only while batch x (first-block channels x height x width x
element size) stays within this many bytes (at least one row per call)."""


@dataclass(frozen=True)
class BatchSizes:
    """Rows per call for each component."""

    unet: int
    vae: int


def vae_activation_bytes(vae: torch.nn.Module, height: int, width: int) -> int:
    """Bytes of one full-resolution activation of ``vae`` for one image of ``height`` x ``width``."""
    channels = int(vae.config.block_out_channels[0])
    itemsize = next(vae.parameters()).element_size()
    return channels * height * width * itemsize


def vae_batch_size(vae: torch.nn.Module, device: torch.device | str, batch_size: int, height: int,
                   width: int) -> int:
    """Rows per VAE encode or decode of ``height`` x ``width`` images under the cap ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if torch.device(device).type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_VAE_ACTIVATION_BYTES // vae_activation_bytes(vae, height, width)))


def batch_sizes(vae: torch.nn.Module, device: torch.device | str, batch_size: int, resolution: int) -> BatchSizes:
    """The rows per call of each component for square images of ``resolution`` pixels."""
    return BatchSizes(unet=batch_size, vae=vae_batch_size(vae, device, batch_size, resolution, resolution))
