"""The reference inference script's three input conversions (the ``reference_inference`` switch).

The published images came from a script that differs from training in three places; by default
the core computes what training computed, and these functions reproduce the script for people
comparing with the published outputs:

* the aged image goes through 8-bit (a PIL image) before the identity embedding and pass 2;
* ArcFace's 112x112 input is an 8-bit image resized with PIL's bilinear filter (antialiased when
  shrinking), not torch's bilinear interpolation without antialiasing;
* CLIP gets the 8-bit image resized with PIL's bicubic filter and normalised *without* the 1/255
  rescaling (pixel values 0..255 into a normaliser built for 0..1), as transformers'
  ``CLIPImageProcessor(do_rescale=False)`` does.
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


def _pil_resize(images: torch.Tensor, size: tuple[int, int], resample) -> list[np.ndarray]:
    from PIL import Image

    width, height = size
    return [np.asarray(Image.fromarray(a).resize((width, height), resample=resample)) for a in to_uint8(images)]


def arcface_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """ArcFace input as the script makes it: 8-bit, PIL bilinear resize to ``size`` on the short
    edge, then 0..1 (float32, on the images' device); normalising to -1..1 is the caller's."""
    from PIL import Image

    _, _, h, w = images.shape
    target = (size, size * h // w) if w <= h else (size * w // h, size)
    resized = np.stack(_pil_resize(images, target, Image.BILINEAR))
    return (torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0).to(images.device)


def clip_pixels(images: torch.Tensor, size: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """CLIP input as the script makes it: 8-bit, PIL bicubic resize of the short edge to ``size``,
    centre crop to ``crop``, then ``(pixel - mean) / std`` on 0..255 values (no 1/255 rescaling)."""
    from PIL import Image

    _, _, h, w = images.shape
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    target = (new_long, size) if w >= h else (size, new_long)
    resized = np.stack(_pil_resize(images, target, Image.BICUBIC)).astype(np.float32)
    new_h, new_w = resized.shape[1:3]
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    cropped = resized[:, top:top + crop, left:left + crop]
    normalised = (cropped - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised)).permute(0, 3, 1, 2).to(images.device)
