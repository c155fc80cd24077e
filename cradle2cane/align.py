"""FFHQ-style alignment from five landmarks, and pasting an edited crop back into the photo.

:func:`align_face` warps a face to the FFHQ square; :func:`paste_back` warps an aged crop back
under a soft mask and leaves every pixel outside the mask untouched. Images are numpy arrays in
RGB order, uint8 0..255 or float 0..1. OpenCV is imported only when needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from .face import DetectedFace, FaceDetector, Which, _import_cv2
from .images import to_float_rgb

logger = logging.getLogger(__name__)

ColorMatch = Literal["none", "mean", "mean_std"]

@dataclass(frozen=True)
class AlignedFace:
    """An FFHQ-aligned crop and everything needed to put an edited crop back.

    ``matrix`` maps photo pixel coordinates to crop pixel coordinates (OpenCV
    convention, pixel centres at integers); ``quad`` is the FFHQ quad in the
    photo (top-left, bottom-left, bottom-right, top-right).
    """

    image: np.ndarray  # (size, size, 3) float32 RGB 0..1
    matrix: np.ndarray  # (2, 3) photo -> aligned
    quad: np.ndarray  # (4, 2)
    bbox: np.ndarray  # (4,)
    kps: np.ndarray  # (5, 2)
    size: int
    photo_size: tuple[int, int]  # (height, width) of the photo it came from
    score: float = 1.0
    age: int | None = None
    gender: Literal["male", "female"] | None = None
    face_index: int = 0

    @property
    def inverse_matrix(self) -> np.ndarray:
        """Aligned crop -> photo coordinates."""
        import cv2

        return cv2.invertAffineTransform(self.matrix)

    def without_image(self) -> AlignedFace:
        """A copy without pixels, to keep transforms around cheaply (e.g. in a node output)."""
        return replace(self, image=np.zeros((0, 0, 3), np.float32))


# --------------------------------------------------------------------------- alignment


def ffhq_quad(kps: np.ndarray) -> np.ndarray:
    """The FFHQ crop quad (top-left, bottom-left, bottom-right, top-right) from 5 landmarks.

    This is the FFHQ recipe (the one Cradle2Cane's training data went through), with the
    eye centres and mouth corners taken from insightface's five points.
    """
    points = np.asarray(kps, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected 5 finite (x, y) landmarks, got shape {points.shape}")
    eye_left, eye_right, mouth_left, mouth_right = points[0], points[1], points[3], points[4]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise ValueError(f"degenerate landmarks (eyes and mouth coincide): {points.tolist()}")
    x /= norm
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_matrix(quad: np.ndarray, size: int) -> np.ndarray:
    """2x3 affine taking the quad's corners to the outer corners of a ``size`` square
    (pixel centres at integers, so corners at -0.5 and size - 0.5)."""
    quad = np.asarray(quad, dtype=np.float64)
    edge = float(size) - 0.5
    target = np.array([[-0.5, -0.5], [-0.5, edge], [edge, edge], [edge, -0.5]])
    source = np.hstack([quad, np.ones((4, 1))])
    solution, *_ = np.linalg.lstsq(source, target, rcond=None)
    return solution.T.copy()


def align_face(
    image: np.ndarray,
    face: DetectedFace | np.ndarray,
    size: int = 512,
    *,
    face_index: int | None = None,
) -> AlignedFace:
    """Warp the face at ``face`` (a detection, or 5 landmarks) to an FFHQ-aligned
    ``size`` x ``size`` float32 RGB crop; where the quad leaves the photo the photo is
    mirrored (``BORDER_REFLECT``) instead of leaving black corners."""
    cv2 = _import_cv2()
    size = int(size)
    if size < 8:
        raise ValueError(f"aligned size must be at least 8 pixels, got {size}")
    if isinstance(face, DetectedFace):
        detected = face
    else:
        kps = np.asarray(face, dtype=np.float64)
        lo, hi = kps.min(axis=0), kps.max(axis=0)
        detected = DetectedFace(bbox=np.concatenate([lo, hi]), score=1.0, kps=kps)
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {array.shape}")
    height, width = array.shape[:2]
    quad = ffhq_quad(detected.kps)
    matrix = quad_matrix(quad, size)

    # Work on the part of the photo under the quad, shrunk first when the face is much
    # larger than the output (bilinear sampling alone would alias, as FFHQ's own script knew).
    lo = np.floor(quad.min(axis=0)).astype(int) - 2
    hi = np.ceil(quad.max(axis=0)).astype(int) + 3
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], width), min(hi[1], height)
    if x1 <= x0 or y1 <= y0:  # quad entirely outside the photo: reflect the whole photo
        x0, y0, x1, y1 = 0, 0, width, height
    crop = to_float_rgb(array[y0:y1, x0:x1])
    offset = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    side = float(np.hypot(*(quad[3] - quad[0])))
    if side > 2.0 * size:
        shrink = 1.25 * size / side
        new = (max(1, round(crop.shape[1] * shrink)), max(1, round(crop.shape[0] * shrink)))
        sx, sy = new[0] / crop.shape[1], new[1] / crop.shape[0]
        crop = cv2.resize(crop, new, interpolation=cv2.INTER_AREA)
        # crop pixel (u, v) of the shrunk copy sits at ((u + 0.5) / sx - 0.5, ...) before it
        unshrink = np.array([[1 / sx, 0.0, 0.5 / sx - 0.5], [0.0, 1 / sy, 0.5 / sy - 0.5], [0.0, 0.0, 1.0]])
        offset = offset @ unshrink
    local = np.vstack([matrix, [0.0, 0.0, 1.0]]) @ offset
    aligned = cv2.warpAffine(
        np.ascontiguousarray(crop),
        local[:2],
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    aligned = np.clip(aligned, 0.0, 1.0).astype(np.float32, copy=False)
    return AlignedFace(
        image=aligned,
        matrix=matrix,
        quad=quad,
        bbox=np.asarray(detected.bbox, dtype=np.float64),
        kps=np.asarray(detected.kps, dtype=np.float64),
        size=size,
        photo_size=(int(height), int(width)),
        score=float(detected.score),
        age=detected.age,
        gender=detected.gender,
        face_index=detected.index if face_index is None else int(face_index),
    )


def align_faces(image: np.ndarray, faces: Sequence[DetectedFace], size: int = 512) -> list[AlignedFace]:
    """:func:`align_face` for each face, keeping their numbers."""
    return [align_face(image, face, size) for face in faces]


def detect_and_align(
    detector: FaceDetector,
    image: np.ndarray,
    which: Which = "largest",
    size: int = 512,
    *,
    image_name: str | None = None,
    index: int | None = None,
) -> list[AlignedFace]:
    """Detect, select and align in one call (raises :class:`NoFaceError`)."""
    faces = detector.find(image, which, image_name=image_name, index=index)
    return align_faces(image, faces, size)


# --------------------------------------------------------------------------- paste back


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
