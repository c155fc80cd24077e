"""ComfyUI's data layout <-> the core's: image tensors, age lists, optional numbers."""

from __future__ import annotations

import numpy as np
import torch

from ..cradle2cane.method import prompts


def to_core(images: torch.Tensor, node: str, input_name: str) -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] (C 3, or 4 with alpha) -> [B,3,H,W] float32 on the CPU."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{node}: input '{input_name}' must be an IMAGE batch [B,H,W,3], got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{node}: input '{input_name}' is an empty batch")
    return images[..., :3].permute(0, 3, 1, 2).float().cpu().contiguous()


def to_comfy(images: torch.Tensor) -> torch.Tensor:
    """Core [B,3,H,W] 0..1 -> ComfyUI IMAGE [B,H,W,3] float32 on the CPU."""
    return images.detach().permute(0, 2, 3, 1).float().clamp(0, 1).cpu().contiguous()


def to_numpy(image: torch.Tensor) -> np.ndarray:
    """One ComfyUI image [H,W,C] -> HxWx3 float32 array 0..1."""
    return image[..., :3].detach().float().clamp(0, 1).cpu().numpy()


def from_numpy(images: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 arrays (uint8 or float 0..1) of one size -> IMAGE [B,H,W,3]."""
    arrays = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32) for a in images]
    return torch.from_numpy(np.stack(arrays)[..., :3]).clamp(0, 1).contiguous()


def parse_ages(text: str, node: str, input_name: str = "target_ages") -> list[int]:
    """``"70"``, ``"20, 40, 60"`` or a range ``"10-80:10"`` (start-end:step, end included)."""
    return prompts.parse_ages(text, f"{node}: {input_name}")


def sweep_ages(start: int, end: int, step: int, node: str) -> list[int]:
    """start, start+step, ... up to and including ``end``; descending when end < start."""
    return prompts.age_range(start, end, step, node)


def optional_value(value: float, sentinel: float = 0.0) -> float | None:
    """Widgets cannot be empty: ``sentinel`` (0, or -1 where 0 is a real value) means 'model default'."""
    return None if value is None or value <= sentinel else float(value)
