"""Reading and writing image files for the command line: tolerant in, atomic out."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch


class ImageFileError(ValueError):
    """An image file cannot be read or written."""


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 or float RGB -> [1,3,H,W] float 0..1."""
    x = torch.from_numpy(np.ascontiguousarray(image))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.permute(2, 0, 1).unsqueeze(0).clamp(0, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] float 0..1 -> HxWx3 uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_image_atomic(image: np.ndarray, path: str | Path) -> Path:
    """Write an image through a temporary file in the same folder, renamed at the end, so a
    failure never leaves a half-written file behind. The format follows the extension."""
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower() or ".png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions().get(suffix, "PNG"))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, ValueError, KeyError)):
            raise ImageFileError(f"cannot write {path}: {exc}") from exc
        raise
    return path
