"""ComfyUI's data layout <-> the core's: image tensors, age lists, optional numbers."""

from __future__ import annotations

import re

import numpy as np
import torch

from ..cradle2cane.method.prompts import MAX_AGE, MIN_AGE, check_age


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


_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)(?:\s*:\s*(\d+))?$")


def parse_ages(text: str, node: str, input_name: str = "target_ages") -> list[int]:
    """``"70"``, ``"20, 40, 60"`` or a range ``"10-80:10"`` (start-end:step, end included)."""
    ages: list[int] = []
    compact = re.sub(r"\s*([-:])\s*", r"\1", str(text).strip())
    for part in filter(None, re.split(r"[,;\s]+", compact)):
        match = _RANGE.match(part)
        try:
            if match:
                start, end, step = int(match[1]), int(match[2]), int(match[3] or 1)
                ages.extend(sweep_ages(start, end, step, node))
            else:
                ages.append(check_age(float(part) if "." in part else int(part), f"{node}: {input_name}"))
        except ValueError as exc:
            if str(exc).startswith(node):
                raise
            raise ValueError(f"{node}: {input_name} {part!r} is not an age: write whole years between {MIN_AGE} "
                             f"and {MAX_AGE}, e.g. '70', '20, 40, 60' or '10-80:10'") from exc
    if not ages:
        raise ValueError(f"{node}: {input_name} is empty: give one age (e.g. '70') or several ('20, 40, 60')")
    return ages


def sweep_ages(start: int, end: int, step: int, node: str) -> list[int]:
    """start, start+step, ... up to and including ``end``; descending when end < start."""
    for value, name in ((start, "start age"), (end, "end age")):
        check_age(value, f"{node}: {name}")
    if step < 1:
        raise ValueError(f"{node}: the age step must be at least 1, got {step}")
    direction = 1 if end >= start else -1
    return list(range(start, end + direction, step * direction))


def optional_value(value: float, sentinel: float = 0.0) -> float | None:
    """Widgets cannot be empty: ``sentinel`` (0, or -1 where 0 is a real value) means 'model default'."""
    return None if value is None or value <= sentinel else float(value)
