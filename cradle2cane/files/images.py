"""Image files and arrays: tolerant reading (EXIF, grey, palette, 16-bit, alpha), atomic writing,
and the conversions between numpy photos and torch batches. torch is imported only when needed."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Extensions taken as images when a folder is scanned."""


class ImageFileError(ValueError):
    """An image file cannot be read or written."""


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any supported array (HxW grey, HxWx3 RGB, HxWx4 RGBA; uint8, uint16 or float 0..1)
    as contiguous HxWx3 uint8 RGB, which is what the detector expects."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return np.ascontiguousarray(((array.astype(np.float32) + 128.0) / 257.0).astype(np.uint8))
    if np.issubdtype(array.dtype, np.floating) or array.dtype == bool:
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("the image contains NaN or infinite values")
        return np.ascontiguousarray((np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    raise ValueError(f"unsupported image dtype {array.dtype}: use uint8, uint16 or float in 0..1")


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """RGB float32 0..1 view of the first three channels (no copy needed for float32)."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    rgb = array[:, :, :3]
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) * (1.0 / 255.0)
    if rgb.dtype == np.uint16:
        return rgb.astype(np.float32) * (1.0 / 65535.0)
    return rgb.astype(np.float32, copy=False)


def load_image(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a photo as HxWx3 uint8 RGB plus its alpha (HxW uint8) or ``None``.

    The EXIF orientation is applied (phones store portraits sideways), grey,
    palette, CMYK and 16-bit files become 8-bit RGB, and alpha is returned
    separately so it can be re-attached after editing.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            try:
                image = ImageOps.exif_transpose(opened)
            except Exception as error:  # broken EXIF must not lose the picture
                logger.warning("ignoring unreadable EXIF orientation of %s: %s", path, error)
                image = opened.copy()
            if image is None:  # pragma: no cover - older Pillow with in_place semantics
                image = opened
            return _pil_to_rgb_alpha(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageFileError(
            f"cannot read image {path}: {error} (is it a complete PNG/JPEG/WebP/TIFF file?)"
        ) from error


def _pil_to_rgb_alpha(image: Any) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if mode == "F" and values.size and values.max() <= 1.0:
            values = values * 255.0
        elif mode.startswith("I;16") or (values.size and values.max() > 255.0):
            values = values / 257.0
        grey = np.clip(values + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)), None
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode in ("1", "L"):
        grey = np.asarray(image.convert("L"))
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)), None
    if image.mode == "RGBA":
        array = np.asarray(image)
        return np.ascontiguousarray(array[:, :, :3]), np.ascontiguousarray(array[:, :, 3])
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))), None


def to_tensor(image: np.ndarray) -> "torch.Tensor":
    """HxWx3 uint8 or float RGB -> [1,3,H,W] float 0..1."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.permute(2, 0, 1).unsqueeze(0).clamp(0, 1)


def to_uint8(image: "torch.Tensor") -> np.ndarray:
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
