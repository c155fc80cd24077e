"""Pasting edited crops back into the photo under soft masks; pixels outside every mask stay untouched.

Each face's crop is warped back with the inverse of its alignment and blended under a soft round
mask (:func:`face_mask`). In a group photo the masks of neighbouring faces overlap, and each crop
holds a piece of its neighbours too; so where masks overlap every pixel is shared out between the
faces by how near it lies to each face's centre (measured in that face's crop), and a face always
keeps its own middle instead of being covered by a neighbour's copy of it. A greyscale photo (also
one stored with three equal channels) gets grey faces back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..files.images import to_float_rgb
from .align import AlignedFace, ColorMatch
from .detect import _import_cv2

logger = logging.getLogger(__name__)

GREY_TOLERANCE: float = 2.0
"""A photo counts as greyscale when its red, green and blue differ by at most this many 8-bit levels
at every pixel (a grey photo saved as a colour JPEG is off by a level or two)."""
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""ITU-R 601 weights: how an aged face is turned grey (as Pillow converts to "L")."""
SHARE_WIDTH: float = 0.1
"""Where two faces' masks overlap, the pixel goes to the face it is nearer to (distance from the crop
centre in units of half the crop side); the hand-over is this soft, in the same units."""


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


def to_grey(image: np.ndarray) -> np.ndarray:
    """HxWx3 (or more channels: the first three count) -> HxW grey by :data:`LUMA`, in the input's
    dtype (uint8 rounded, floats as they are)."""
    grey = np.asarray(image)[..., :3].astype(np.float32) @ np.asarray(LUMA, np.float32)
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8) if image.dtype == np.uint8 else grey.astype(image.dtype)


def is_greyscale(photo: np.ndarray) -> bool:
    """Whether ``photo`` (HxW, HxWxC; uint8, uint16 or float 0..1) holds no colour: one channel, or
    red, green and blue equal within :data:`GREY_TOLERANCE` levels everywhere."""
    array = np.asarray(photo)
    if array.ndim == 2 or array.shape[2] < 3:
        return True
    full = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(array.dtype, 1.0)
    tolerance = GREY_TOLERANCE / 255.0 * full
    red, green, blue = (array[..., c].astype(np.float32) for c in range(3))
    return bool(np.abs(red - green).max() <= tolerance and np.abs(green - blue).max() <= tolerance)


@dataclass
class _Layer:
    """One face's contribution inside its region of interest (rows y0:y1, columns x0:x1)."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    mask: np.ndarray  # (h, w) blending weight 0..1
    closeness: np.ndarray  # (h, w) the face's claim where masks overlap (larger = nearer its centre)
    pixels: np.ndarray  # (h, w, 3) float32 warped, colour-matched crop


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
    (RGBA) is kept, and the output has the photo's dtype (uint8, uint16, or float 0..1).
    ``color_match`` shifts the crop's colours (``mean``) or also rescales their spread
    (``mean_std``) to agree with the photo *in the feather band*, where the two are
    blended: a global tint from the generator disappears, age-related changes inside
    the face stay.  ``aged_face`` may have another resolution than ``face.size``.
    A greyscale photo (see :func:`is_greyscale`) gets the crop back in grey.
    """
    return paste_back_many(photo, [aged_face], [face], feather=feather, mask_scale=mask_scale,
                           color_match=color_match)


def paste_back_many(
    photo: np.ndarray,
    aged_faces: Sequence[np.ndarray],
    faces: Sequence[AlignedFace],
    *,
    feather: float = 0.1,
    mask_scale: float = 0.9,
    color_match: ColorMatch = "mean",
) -> np.ndarray:
    """Paste several aged crops (one per aligned face, same order) into one photo, as
    :func:`paste_back` does for one; where masks of neighbouring faces overlap, each pixel is shared
    between them by how near it is to each face's centre, so the result does not depend on the order
    of the faces and no face is painted over by its neighbour's crop."""
    if color_match not in ("none", "mean", "mean_std"):
        raise ValueError(f"color_match must be 'none', 'mean' or 'mean_std', got {color_match!r}")
    if len(aged_faces) != len(faces):
        raise ValueError(f"got {len(aged_faces)} aged faces for {len(faces)} aligned faces")
    array = np.asarray(photo)
    grey_2d = array.ndim == 2
    if grey_2d:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"photo must be HxW, HxWx3 or HxWx4, got shape {np.asarray(photo).shape}")
    height, width = array.shape[:2]
    for face in faces:
        if (height, width) != tuple(face.photo_size):
            raise ValueError(f"the face was aligned from a {face.photo_size[1]}x{face.photo_size[0]} photo, "
                             f"but the photo given is {width}x{height}")
    grey = is_greyscale(array)
    layers = [_layer(array, aged, face, feather, mask_scale, color_match, grey) for aged, face in zip(aged_faces, faces)]
    layers = [layer for layer in layers if layer is not None]
    out = array.copy()
    if layers:
        _composite(out, array, layers)
    return out[:, :, 0] if grey_2d else out


def _layer(array: np.ndarray, aged_face: np.ndarray, face: AlignedFace, feather: float, mask_scale: float,
           color_match: str, grey: bool) -> _Layer | None:
    """The warped crop, its mask and its claim in the face's region of the photo; ``None`` when the
    mask does not reach the photo."""
    cv2 = _import_cv2()
    aged = to_float_rgb(np.asarray(aged_face))
    if aged.ndim != 3 or aged.shape[0] != aged.shape[1]:
        raise ValueError(f"the aged face must be a square HxWx3 image, got shape {np.asarray(aged_face).shape}")
    height, width = array.shape[:2]
    crop_size = aged.shape[0]
    # photo -> aged-crop coordinates (the crop may be another resolution than the alignment)
    ratio = crop_size / face.size
    rescale = np.array([[ratio, 0.0, 0.5 * ratio - 0.5], [0.0, ratio, 0.5 * ratio - 0.5], [0.0, 0.0, 1.0]])
    forward = rescale @ np.vstack([face.matrix, [0.0, 0.0, 1.0]])
    lo = np.floor(face.quad.min(axis=0)).astype(int) - 2
    hi = np.ceil(face.quad.max(axis=0)).astype(int) + 3
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], width), min(hi[1], height)
    if x1 <= x0 or y1 <= y0:
        logger.debug("face %d lies outside the photo; nothing to paste", face.face_index)
        return None
    local = (forward @ np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]]))[:2]
    roi = (x1 - x0, y1 - y0)
    inverse_flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    mask = cv2.warpAffine(face_mask(crop_size, mask_scale, feather), local, roi, flags=inverse_flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    if not (mask > 0.0).any():
        return None
    if grey:
        aged = np.repeat(to_grey(aged)[..., None], 3, axis=2)
    warped = cv2.warpAffine(np.ascontiguousarray(aged), local, roi, flags=inverse_flags,
                            borderMode=cv2.BORDER_REFLECT)
    if color_match != "none":
        warped = _match_colours(warped, to_float_rgb(array[y0:y1, x0:x1]), mask, color_match)
    # distance of each pixel from the crop centre, in units of half the crop side
    ys, xs = np.mgrid[0:roi[1], 0:roi[0]].astype(np.float64)
    centre = (crop_size - 1) / 2.0
    u, v = (local[i, 0] * xs + local[i, 1] * ys + local[i, 2] - centre for i in (0, 1))
    closeness = (-(np.hypot(u, v) / (crop_size / 2.0) / SHARE_WIDTH) ** 2).astype(np.float32)
    return _Layer((x0, y0, x1, y1), mask, closeness, warped)


def _composite(out: np.ndarray, array: np.ndarray, layers: list[_Layer]) -> None:
    """Blend all layers into ``out`` (a copy of ``array``) in one go: each pixel's weight is shared
    between the masks that cover it by a softmax of their closeness; pixels no mask covers are not
    written."""
    ux0, uy0 = min(l.box[0] for l in layers), min(l.box[1] for l in layers)  # noqa: E741
    ux1, uy1 = max(l.box[2] for l in layers), max(l.box[3] for l in layers)  # noqa: E741
    shape = (uy1 - uy0, ux1 - ux0)

    def region(layer: _Layer) -> tuple[slice, slice]:
        x0, y0, x1, y1 = layer.box
        return slice(y0 - uy0, y1 - uy0), slice(x0 - ux0, x1 - ux0)

    best = np.full(shape, -np.inf, np.float32)
    for layer in layers:
        where = region(layer)
        best[where] = np.maximum(best[where], np.where(layer.mask > 0, layer.closeness, -np.inf))
    shares = []
    total = np.zeros(shape, np.float32)
    for layer in layers:
        where = region(layer)
        share = np.where(layer.mask > 0, np.exp(layer.closeness - best[where]), 0.0).astype(np.float32)
        total[where] += share
        shares.append(share)
    weight = np.zeros(shape, np.float32)
    blend = np.zeros((*shape, 3), np.float32)
    for layer, share in zip(layers, shares):
        where = region(layer)
        w = layer.mask * np.divide(share, total[where], out=np.zeros_like(share), where=share > 0)
        weight[where] += w
        blend[where] += w[:, :, None] * layer.pixels
    original = to_float_rgb(array[uy0:uy1, ux0:ux1])
    blended = original * (1.0 - weight[:, :, None]) + blend
    channels = 3 if out.shape[2] >= 3 else 1
    if channels == 1:  # a one-channel photo: the crops were made grey, any channel will do
        blended = blended[:, :, :1]
    if out.dtype == np.uint8:
        values = np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif out.dtype == np.uint16:
        values = np.clip(blended * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
    else:
        values = np.clip(blended, 0.0, 1.0).astype(out.dtype)
    inside = weight > 0
    target = out[uy0:uy1, ux0:ux1, :channels]  # a view: alpha (channel 3) is never written
    target[inside] = values[inside]


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
