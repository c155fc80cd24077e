"""Pasting an edited crop back into the photo under a soft mask; pixels outside stay untouched."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..files.images import to_float_rgb
from .align import AlignedFace, ColorMatch
from .detect import _import_cv2

logger = logging.getLogger(__name__)


def face_mask(size: int, mask_scale: float = 0.9, feather: float = 0.1) -> np.ndarray:
    """Soft round blending mask in aligned-crop coordinates (float32, 0..1).

    The disc has radius ``mask_scale * size / 2`` and fades to zero over its outer
    ``feather * size`` pixels (smoothstep), so the aligned square's corners, which hold
    background and hair, never reach the photo.
    """
    if not 0.0 < mask_scale <= 1.0:
        raise ValueError(f"mask_scale must be in (0, 1], got {mask_scale}")
    if not 0.0 <= feather <= mask_scale / 2:
        raise ValueError(f"feather must be in [0, mask_scale / 2], got {feather}")
    centre = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = np.hypot(xs - centre, ys - centre)
    outer = mask_scale * size / 2.0
    width = feather * size
    if width <= 0:
        return (radius < outer).astype(np.float32)
    t = np.clip((outer - radius) / width, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def paste_back(
    photo: np.ndarray,
    aged_face: np.ndarray,
    face: AlignedFace,
    *,
    feather: float = 0.1,
    mask_scale: float = 0.9,
    color_match: ColorMatch = "mean",
) -> np.ndarray:
    """Put an edited aligned crop back into ``photo`` and return the new photo.

    The crop is warped back with the inverse of ``face.matrix`` and blended under
    :func:`face_mask`; pixels where the mask is zero are returned bit-identical, alpha
    (RGBA) is kept, and the output has the photo's dtype (uint8, or float 0..1).
    ``color_match`` shifts the crop's colours (``mean``) or also rescales their spread
    (``mean_std``) to agree with the photo *in the feather band*, where the two are
    blended: a global tint from the generator disappears, age-related changes inside
    the face stay.  ``aged_face`` may have another resolution than ``face.size``.
    """
    cv2 = _import_cv2()
    if color_match not in ("none", "mean", "mean_std"):
        raise ValueError(f"color_match must be 'none', 'mean' or 'mean_std', got {color_match!r}")
    array = np.asarray(photo)
    grey_2d = array.ndim == 2
    if grey_2d:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"photo must be HxW, HxWx3 or HxWx4, got shape {np.asarray(photo).shape}")
    height, width = array.shape[:2]
    if (height, width) != tuple(face.photo_size):
        raise ValueError(
            f"the face was aligned from a {face.photo_size[1]}x{face.photo_size[0]} photo, "
            f"but the photo given is {width}x{height}"
        )
    aged = to_float_rgb(np.asarray(aged_face))
    if aged.ndim != 3 or aged.shape[0] != aged.shape[1]:
        raise ValueError(f"the aged face must be a square HxWx3 image, got shape {np.asarray(aged_face).shape}")
    crop_size = aged.shape[0]

    # photo -> aged-crop coordinates (the crop may be another resolution than the alignment)
    ratio = crop_size / face.size
    rescale = np.array([[ratio, 0.0, 0.5 * ratio - 0.5], [0.0, ratio, 0.5 * ratio - 0.5], [0.0, 0.0, 1.0]])
    forward = rescale @ np.vstack([face.matrix, [0.0, 0.0, 1.0]])

    lo = np.floor(face.quad.min(axis=0)).astype(int) - 2
    hi = np.ceil(face.quad.max(axis=0)).astype(int) + 3
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], width), min(hi[1], height)
    out = array.copy()
    if x1 <= x0 or y1 <= y0:
        logger.debug("face %d lies outside the photo; nothing to paste", face.face_index)
        return out[:, :, 0] if grey_2d else out
    local = (forward @ np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]]))[:2]
    roi = (x1 - x0, y1 - y0)
    inverse_flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    mask = cv2.warpAffine(
        face_mask(crop_size, mask_scale, feather), local, roi,
        flags=inverse_flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
    )
    inside = mask > 0.0
    if not inside.any():
        return out[:, :, 0] if grey_2d else out
    warped = cv2.warpAffine(
        np.ascontiguousarray(aged), local, roi, flags=inverse_flags, borderMode=cv2.BORDER_REFLECT
    )
    original = to_float_rgb(array[y0:y1, x0:x1])
    if color_match != "none":
        warped = _match_colours(warped, original, mask, color_match)
    weight = mask[:, :, None]
    blended = original * (1.0 - weight) + warped * weight
    channels = 3 if out.shape[2] >= 3 else 1
    if channels == 1:  # a grey photo stays grey
        blended = blended.mean(axis=2, keepdims=True)
    if out.dtype == np.uint8:
        values = np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif out.dtype == np.uint16:
        values = np.clip(blended * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
    else:
        values = np.clip(blended, 0.0, 1.0).astype(out.dtype)
    region = out[y0:y1, x0:x1, :channels]  # a view: alpha (channel 3) is never written
    region[inside] = values[inside]
    return out[:, :, 0] if grey_2d else out


def _match_colours(warped: np.ndarray, original: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Shift (and for ``mean_std`` rescale) ``warped`` so its statistics in the feather band
    equal the photo's there."""
    band = 4.0 * mask * (1.0 - mask)
    if band.sum() < 1.0:  # hard mask: use the whole masked region
        band = mask
    total = float(band.sum())
    if total <= 0:
        return warped
    w = band[:, :, None] / total
    mean_w = (warped * w).sum(axis=(0, 1))
    mean_o = (original * w).sum(axis=(0, 1))
    if mode == "mean_std":
        std_w = np.sqrt(((warped - mean_w) ** 2 * w).sum(axis=(0, 1)))
        std_o = np.sqrt(((original - mean_o) ** 2 * w).sum(axis=(0, 1)))
        gain = np.where(std_w > 1e-4, std_o / np.maximum(std_w, 1e-4), 1.0).clip(0.5, 2.0)
        matched = (warped - mean_w) * gain + mean_o
    else:
        matched = warped + (mean_o - mean_w)
    return np.clip(matched, 0.0, 1.0).astype(np.float32)


def paste_back_many(
    photo: np.ndarray,
    aged_faces: Sequence[np.ndarray],
    faces: Sequence[AlignedFace],
    **options: Any,
) -> np.ndarray:
    """Paste several aged crops (one per aligned face, same order) into one photo."""
    if len(aged_faces) != len(faces):
        raise ValueError(f"got {len(aged_faces)} aged faces for {len(faces)} aligned faces")
    result = np.asarray(photo)
    for aged, face in zip(aged_faces, faces):
        result = paste_back(result, aged, face, **options)
    return result
