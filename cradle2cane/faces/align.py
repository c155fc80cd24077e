"""FFHQ-style alignment from five landmarks.

:func:`align_face` warps a face to the FFHQ square and keeps the transform, with which ``paste``
puts the aged crop back. Images are numpy arrays in RGB order, uint8 0..255 or float 0..1. OpenCV
is imported only when needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .detect import DetectedFace, FaceDetector, Which, _import_cv2
from ..files.images import to_float_rgb

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
