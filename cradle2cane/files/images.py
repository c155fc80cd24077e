"""Image files and arrays: tolerant reading (EXIF, grey, palette, 16-bit, alpha), atomic writing,
and the conversions between numpy photos and torch batches. torch is imported only when needed."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
"""The only formats opened (Pillow knows many more, some handled by outside programs)."""
READ_FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
"""Extensions taken as images when a folder is scanned."""
MAX_PIXELS = 100_000_000
"""The largest photo opened (100 MP): Pillow's own guard stops only at twice its warning size."""

WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}
"""Extension -> the format of still images written."""
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
"""Formats that keep a transparency channel."""


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

    Only the formats in ``READ_FORMATS`` are opened, and only up to ``MAX_PIXELS`` pixels (checked
    from the header, before decoding). The EXIF orientation is applied (phones store portraits
    sideways), grey, palette, CMYK and 16-bit files become 8-bit RGB, and alpha is returned
    separately so it can be re-attached after editing. Of an animation or a multi-page file the
    first frame is used, with a warning saying so.
    """
    from PIL import Image, ImageOps

    path = check_image_file(path)
    try:
        with Image.open(path, formats=READ_FORMATS) as opened:
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise ImageFileError(
                    f"{path} is {width}x{height} = {width * height / 1e6:.0f} megapixels, more than the "
                    f"{MAX_PIXELS / 1e6:.0f} MP this tool opens (a guard against decompression bombs): "
                    f"downscale it first")
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:
                logger.warning("%s has %d frames; using the first", path, frames)
            opened.load()
            try:
                image = ImageOps.exif_transpose(opened)
            except Exception as error:  # broken EXIF must not lose the picture
                logger.warning("ignoring unreadable EXIF orientation of %s: %s", path, error)
                image = opened.copy()
            if image is None:  # pragma: no cover - older Pillow with in_place semantics
                image = opened
            return _pil_to_rgb_alpha(image)
    except ImageFileError:
        raise
    except Image.UnidentifiedImageError as error:
        raise ImageFileError(f"cannot read image {path}: not a {READ_FORMAT_NAMES} file, or a damaged one") \
            from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageFileError(f"cannot read image {path}: {error} (is it a complete {READ_FORMAT_NAMES} file?)") \
            from error


def check_image_file(path: str | Path) -> Path:
    """``path`` if it names a regular file; otherwise an error that says what it is instead."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except OSError as error:
        raise ImageFileError(f"cannot read image {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ImageFileError(f"{path} is a folder, not an image file: give one image")
    if not stat.S_ISREG(mode):
        kind = "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ImageFileError(f"{path} is {kind}, not an image file: save the image to a file and give that")
    return path


def _is_grey_mode(mode: str) -> bool:
    return mode in ("1", "L", "I", "F") or mode.startswith("I;16")


def stores_grey(path: str | Path) -> bool:
    """Whether an image file (already read once by ``load_image``) stores one grey channel and no
    alpha: results of such a photo are written as grey files too."""
    from PIL import Image

    with Image.open(path, formats=READ_FORMATS) as opened:  # the header only
        return _is_grey_mode(opened.mode)


def _pil_to_rgb_alpha(image: Any) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if _is_grey_mode(mode) and mode not in ("1", "L"):
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


def output_format(path: str | Path, alpha: bool = False, option: str = "--out",
                  formats: dict[str, str] = WRITE_FORMATS) -> str:
    """The Pillow format for writing ``path``, or an error naming ``option`` when the extension is
    not one of ``formats`` or cannot hold an image with ``alpha``."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        known = ", ".join(dict.fromkeys(formats))
        raise ImageFileError(f"{option} {path}: {'unknown image extension ' + repr(suffix) if suffix else 'no extension'}"
                             f"; end it with one of {known}")
    fmt = formats[suffix]
    if alpha and fmt not in ALPHA_FORMATS:
        raise ImageFileError(f"{option} {path}: the photo has transparency, which {suffix} cannot store; "
                             f"use .png, .webp or .tif")
    return fmt


_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


def save_image_atomic(image: np.ndarray, path: str | Path, *, overwrite: bool = True,
                      option: str = "--out") -> Path:
    """Write an HxW (grey), HxWx3 or HxWx4 (with alpha) uint8 image in the format its extension names, through
    the atomic writer: a failure or a kill never leaves a half-written file, and with ``overwrite``
    off an existing file is refused. ``option``: the flag that named ``path``, for the messages."""
    from PIL import Image

    fmt = output_format(path, image.ndim == 3 and image.shape[2] == 4, option)
    return _write(path, lambda tmp: Image.fromarray(image).save(tmp, format=fmt, **_SAVE_OPTIONS.get(fmt, {})),
                  overwrite)


ANIMATION_FORMATS = {".gif": "GIF", ".webp": "WEBP"}


def save_animation_atomic(frames: list[np.ndarray], path: str | Path, *, seconds_per_frame: float = 0.5,
                          overwrite: bool = True, option: str = "--out") -> Path:
    """An animated GIF or WebP (by extension) that loops forever, written like ``save_image_atomic``."""
    from PIL import Image

    fmt = output_format(path, False, option, ANIMATION_FORMATS)
    images = [Image.fromarray(np.ascontiguousarray(f[..., :3])) for f in frames]

    def write(tmp: Path) -> None:
        images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:], loop=0,
                       duration=int(round(seconds_per_frame * 1000)), **_SAVE_OPTIONS.get(fmt, {}))

    return _write(path, write, overwrite)


def _write(path: str | Path, write, overwrite: bool) -> Path:
    try:
        return write_atomic(path, write, overwrite=overwrite)
    except FileExistsError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ImageFileError(f"cannot write {path}: {exc}") from exc
