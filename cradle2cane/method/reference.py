"""The reference inference script's three input conversions (the ``reference_inference`` switch).

The published images came from a script that differs from training in three places; by default
the core computes what training computed, and these functions reproduce the script for people
comparing with the published outputs:

* the aged image goes through 8-bit (a PIL image) before the identity embedding and pass 2;
* ArcFace's 112x112 input is an 8-bit image resized with PIL's bilinear filter (antialiased when
  shrinking), not torch's bilinear interpolation without antialiasing;
* CLIP gets the 8-bit image, resized as transformers' fast CLIP processor does and normalised
  *without* the 1/255 rescaling (``do_rescale=False``: pixel values 0..255 into a normaliser built
  for 0..1).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] 0..1 -> [B,H,W,3] uint8, rounded as diffusers turns its output into PIL images."""
    array = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (array * 255).round().astype(np.uint8)


def quantise_8bit(images: torch.Tensor) -> torch.Tensor:
    """The PIL round trip of an image between the passes: float32 values k/255 (as diffusers reads a
    PIL image back), on the images' device."""
    pixels = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2)
    return (pixels.float() / 255.0).to(images.device)


def _short_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short edge at ``size``, as torchvision and transformers compute it."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def arcface_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """ArcFace input as the script made it (torchvision ``Resize(size)`` on a PIL image, i.e. PIL's
    bilinear filter, antialiased when shrinking, on the 8-bit image), in 0..1 (float32, on the
    images' device); normalising to -1..1 is the caller's."""
    from PIL import Image

    height, width = _short_edge_size(images.shape[-2], images.shape[-1], size)
    resized = np.stack([np.asarray(Image.fromarray(a).resize((width, height), resample=Image.BILINEAR))
                        for a in to_uint8(images)])
    return (torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0).to(images.device)


def clip_pixels(images: torch.Tensor, size: int, crop: int, mean: Sequence[float],
                std: Sequence[float]) -> torch.Tensor:
    """CLIP input as the script made it (transformers' fast CLIP processor, ``do_rescale=False``):
    the 8-bit image resized on the CPU with torch's antialiased bicubic on uint8 (torchvision's
    path), centre crop, then ``(pixel - mean) / std`` on 0..255 values in float32."""
    height, width = _short_edge_size(images.shape[-2], images.shape[-1], size)
    pixels = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).contiguous()
    resized = torch.nn.functional.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True)
    top, left = int((height - crop) / 2.0), int((width - crop) / 2.0)
    x = resized[:, :, top:top + crop, left:left + crop].float()
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.to(images.device)
