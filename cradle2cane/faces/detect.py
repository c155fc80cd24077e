"""Faces in the wild: find them with an insightface model pack, with age and gender estimates.

Cradle2Cane was trained on FFHQ crops, so a photo must be turned into such crops first
(``align``) and the aged crops put back afterwards. :class:`FaceDetector` runs an insightface pack
(``buffalo_l``, ``antelopev2``: SCRFD detector plus the genderage model; loaded by ``packs``)
through insightface's own model router, on CUDA when onnxruntime offers it.

The photo is always scaled here, not by insightface, and handed to the detector at exactly its
input size: area-averaged when shrinking (a 4000px photo does not alias), and letterboxed into
detectors exported with a fixed input (such as a 640x640 SCRFD), which insightface cannot run at
any other size. A ``det_size`` larger than such a fixed input is covered by overlapping tiles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Union

import numpy as np

from ..files.images import to_rgb_uint8
from .packs import LoadedPack, PackSpec, Providers, loaded_pack, resolve_pack_dir, resolve_providers

logger = logging.getLogger(__name__)

MIN_FACE_SIZE: int = 32
"""Faces whose box is narrower than this (photo pixels) are refused: the aligned crop would be mush."""
MIN_DET_SIZE: int = 160
"""The smallest detector input tried when a large close-up face is missed."""
TILE_OVERLAP: float = 0.25
"""Overlap of neighbouring tiles, as a fraction of the tile side: faces up to this size (in detector
pixels) always lie whole inside one tile; larger ones are found on the whole photo."""
MAX_DET_SIZE: int = 2048
"""The largest detector input accepted (the detector's buffers grow with its square)."""

Which = Union[Literal["largest", "all"], int]


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as error:
        raise ImportError("face alignment needs OpenCV: pip install opencv-python-headless") from error
    return cv2


class NoFaceError(ValueError):
    """No usable face in an image; the message says which image and what to try."""

    def __init__(self, message: str, *, image_name: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.image_name = image_name
        self.index = index


class FaceTooSmallError(NoFaceError):
    """Faces were found, but all (or the chosen one) are below ``min_face_size``."""


def _where(image_name: str | None, index: int | None) -> str:
    name = image_name or "the image"
    return f"{name} (batch index {index})" if index is not None else name


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DetectedFace:
    """One detection in photo pixel coordinates.

    ``index`` numbers the faces of one photo left to right (by box centre),
    which is the number :func:`select_faces` takes.
    """

    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    kps: np.ndarray  # (5, 2) left eye, right eye, nose, left / right mouth corner (image left/right)
    age: int | None = None
    gender: Literal["male", "female"] | None = None
    index: int = 0

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def size(self) -> float:
        """The shorter box side, the measure ``min_face_size`` applies to."""
        return min(self.width, self.height)


# --------------------------------------------------------------------------- detection


class FaceDetector:
    """insightface detection + age/gender estimate, loaded once and shared.

    ``pack`` is the pack folder, or ``(root, name)`` with insightface's
    ``root/models/name`` layout (ComfyUI: ``(models/insightface, "buffalo_l")``).
    Loading happens on first use and is cached per (pack, providers).
    """

    def __init__(
        self,
        pack: PackSpec,
        providers: Providers = "auto",
        det_size: int = 640,
        det_thresh: float = 0.5,
        min_face_size: float = MIN_FACE_SIZE,
    ) -> None:
        det_size = int(det_size)
        if not MIN_DET_SIZE <= det_size <= MAX_DET_SIZE or det_size % 32:
            raise ValueError(f"det_size must be a multiple of 32 in {MIN_DET_SIZE}..{MAX_DET_SIZE}, got {det_size}")
        if not 0.0 < float(det_thresh) < 1.0:
            raise ValueError(f"det_thresh must be between 0 and 1, got {det_thresh}")
        if min_face_size < 0:
            raise ValueError(f"min_face_size must be >= 0, got {min_face_size}")
        self.pack_dir = resolve_pack_dir(pack)
        self.providers = providers
        self.det_size = det_size
        self.det_thresh = float(det_thresh)
        self.min_face_size = float(min_face_size)

    def __repr__(self) -> str:
        return (
            f"FaceDetector({str(self.pack_dir)!r}, providers={self.providers!r}, "
            f"det_size={self.det_size}, det_thresh={self.det_thresh})"
        )

    def retry_sizes(self) -> list[int]:
        """Detector input sizes tried in turn until one finds a face: a face filling most of
        the frame is too big for SCRFD's largest anchors at ``det_size``, but not at half."""
        sizes = [self.det_size]
        while sizes[-1] // 2 >= MIN_DET_SIZE:
            sizes.append((sizes[-1] // 2) // 32 * 32)
        return sizes

    def _pack(self) -> LoadedPack:
        return loaded_pack(self.pack_dir, resolve_providers(self.providers))

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in ``image`` (RGB/RGBA/grey, uint8 or float 0..1), numbered and ordered
        left to right; an empty list when there are none."""
        rgb = to_rgb_uint8(image)
        pack = self._pack()
        boxes, points = np.zeros((0, 5)), np.zeros((0, 5, 2))
        with pack.lock:
            pack.detector.det_thresh = self.det_thresh  # both old and new SCRFD read it here
            for size in self.retry_sizes():
                boxes, points = self._detect_at(pack, rgb, size)
                if len(boxes):
                    if size != self.det_size:
                        logger.info("face found at det_size %d after none at %d", size, self.det_size)
                    break
                logger.debug("no face at det_size %d", size)
            bgr = np.ascontiguousarray(rgb[:, :, ::-1]) if len(boxes) and pack.genderage is not None else None
            estimates = [_age_gender(pack, bgr, box, kps) for box, kps in zip(boxes, points)]
        results = [DetectedFace(bbox=box[:4].copy(), score=float(box[4]), kps=kps, age=age, gender=gender)
                   for box, kps, (age, gender) in zip(boxes, points, estimates)]
        results.sort(key=lambda f: ((f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2))
        return [replace(face, index=i) for i, face in enumerate(results)]

    def _detect_at(self, pack: LoadedPack, rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes with scores (N, 5) and landmarks (N, 5, 2), in photo pixels, of the faces found with
        the photo scaled so that its longer side is ``size`` detector pixels."""
        height, width = rgb.shape[:2]
        tile = pack.fixed_input or (size, size)
        scaled, scale = _scaled(rgb, size)
        logger.debug("detecting at %dx%d (photo %dx%d, detector input %dx%d)", scaled.shape[1],
                     scaled.shape[0], width, height, *tile)
        if scaled.shape[1] <= tile[0] and scaled.shape[0] <= tile[1]:
            return _to_photo(*self._run(pack, scaled, (0, 0), tile), scale)
        # Larger than a fixed-size detector's input: overlapping tiles for the faces that fit in the
        # overlap, plus the whole photo fitted into one input for the larger ones.
        fitted, fitted_scale = _scaled(rgb, int(min(tile[0] / width, tile[1] / height) * max(width, height)))
        found = [_to_photo(*self._run(pack, fitted, (0, 0), tile), fitted_scale)]
        xs, ys = _tile_starts(scaled.shape[1], tile[0]), _tile_starts(scaled.shape[0], tile[1])
        for j in range(len(ys)):
            for i in range(len(xs)):
                boxes, points = self._run(pack, scaled, (xs[i], ys[j]), tile)
                centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
                keep = (_in_core(centre[:, 0], xs, i, tile[0]) & _in_core(centre[:, 1], ys, j, tile[1])
                        & (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
                           <= TILE_OVERLAP * min(tile)))
                found.append(_to_photo(boxes[keep], points[keep], scale))
        boxes = np.concatenate([b for b, _ in found])
        points = np.concatenate([k for _, k in found])
        order = np.argsort(-boxes[:, 4], kind="stable")
        keep = order[pack.detector.nms(boxes[order].astype(np.float32))]
        return boxes[keep], points[keep]

    def _run(self, pack: LoadedPack, scaled: np.ndarray, corner: tuple[int, int],
             tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The detector on the ``tile``-sized window of ``scaled`` at ``corner`` (zero-padded where
        the photo ends): boxes with scores (N, 5) and landmarks (N, 5, 2) in ``scaled`` pixels."""
        x, y = corner
        window = scaled[y:y + tile[1], x:x + tile[0]]
        canvas = np.zeros((tile[1], tile[0], 3), np.uint8)
        canvas[:window.shape[0], :window.shape[1]] = window[:, :, ::-1]  # insightface takes BGR
        boxes, kpss = pack.detector.detect(canvas, input_size=tile, max_num=0)
        if len(boxes) and kpss is None:
            raise ValueError(f"the detector in {self.pack_dir} gives no landmarks; use an SCRFD *kps* model")
        boxes = np.asarray(boxes, np.float64).reshape(-1, 5) + [x, y, x, y, 0]
        points = np.asarray(kpss if len(boxes) else np.zeros((0, 5, 2)), np.float64).reshape(-1, 5, 2) + [x, y]
        return boxes, points

    def find(
        self,
        image: np.ndarray,
        which: Which = "largest",
        *,
        image_name: str | None = None,
        index: int | None = None,
    ) -> list[DetectedFace]:
        """Detect and select (see :func:`select_faces`); raises :class:`NoFaceError` with the
        settings to try when nothing usable is found."""
        return select_faces(
            self.detect(image),
            which,
            min_face_size=self.min_face_size,
            image_name=image_name,
            index=index,
            det_thresh=self.det_thresh,
            det_size=self.det_size,
        )


def _scaled(rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The photo resized so that its longer side is ``size`` (area-averaged when shrinking), and the
    (x, y) factors it was resized by."""
    height, width = rgb.shape[:2]
    factor = size / max(height, width)
    new = (max(1, round(width * factor)), max(1, round(height * factor)))
    if new == (width, height):
        return rgb, np.ones(2)
    cv2 = _import_cv2()
    resized = cv2.resize(rgb, new, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return resized, np.array([new[0] / width, new[1] / height])


def _to_photo(boxes: np.ndarray, points: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and landmarks from scaled-photo pixels back to photo pixels (pixel centres: photo
    pixel p lies at (p + 0.5) * scale - 0.5 in the scaled copy)."""
    corners = (boxes[:, :4].reshape(-1, 2, 2) + 0.5) / scale - 0.5
    return np.hstack([corners.reshape(-1, 4), boxes[:, 4:5]]), (points + 0.5) / scale - 0.5


def _tile_starts(length: int, side: int) -> list[int]:
    """Where the tiles of ``side`` pixels covering ``length`` start: evenly spread, the first at 0 and
    the last flush with the end, overlapping by at least ``TILE_OVERLAP * side``."""
    if length <= side:
        return [0]
    step = side - int(TILE_OVERLAP * side)
    count = -(-(length - side) // step) + 1
    return [round(k * (length - side) / (count - 1)) for k in range(count)]


def _in_core(centre: np.ndarray, starts: list[int], k: int, side: int) -> np.ndarray:
    """Whether a face centred at ``centre`` belongs to tile ``k`` of ``starts``: the middle of each
    overlap splits it between the two tiles, so every face is kept from exactly one tile, and a face
    no larger than the overlap lies whole inside that tile."""
    low = (starts[k - 1] + side + starts[k]) / 2 if k > 0 else -np.inf
    high = (starts[k] + side + starts[k + 1]) / 2 if k + 1 < len(starts) else np.inf
    return (centre >= low) & (centre < high)


def _age_gender(pack: LoadedPack, bgr: np.ndarray | None, box: np.ndarray,
                kps: np.ndarray) -> tuple[int | None, Literal["male", "female"] | None]:
    """The pack's age and gender estimate for one face of the full-resolution photo."""
    if pack.genderage is None or bgr is None:
        return None, None
    from insightface.app.common import Face

    face = Face(bbox=np.asarray(box[:4], np.float32), kps=np.asarray(kps, np.float32), det_score=float(box[4]))
    gender, age = pack.genderage.get(bgr, face)
    return int(age), ("male" if int(gender) == 1 else "female")


def select_faces(
    faces: Sequence[DetectedFace],
    which: Which = "largest",
    *,
    min_face_size: float = MIN_FACE_SIZE,
    image_name: str | None = None,
    index: int | None = None,
    det_thresh: float | None = None,
    det_size: int | None = None,
) -> list[DetectedFace]:
    """Pick faces: ``"largest"`` (biggest box), ``"all"`` (left to right) or a face number
    (``DetectedFace.index``: left to right from 0; negative counts from the right).

    Faces smaller than ``min_face_size`` are skipped by ``"all"``/``"largest"`` and refused
    when chosen by number.
    """
    where = _where(image_name, index)
    if not faces:
        settings = []
        if det_thresh is not None:
            settings.append(f"det_thresh={det_thresh:g}")
        if det_size is not None:
            settings.append(f"det_size={det_size}")
        used = f" with {', '.join(settings)}" if settings else ""
        raise NoFaceError(
            f"no face found in {where}{used}. Try a lower det_thresh (e.g. 0.3), a larger det_size "
            f"(e.g. 1024 for small faces in a big photo; smaller sizes were already tried), or, if the "
            f"image is already an aligned face crop, skip detection (--aligned with --source-age and "
            f"--gender on the command line)",
            image_name=image_name,
            index=index,
        )
    ordered = sorted(faces, key=lambda f: f.index)
    if isinstance(which, str):
        if which not in ("largest", "all"):
            raise ValueError(f"which face: expected 'largest', 'all' or a face number, got {which!r}")
        usable = [f for f in ordered if f.size >= min_face_size]
        if not usable:
            biggest = max(ordered, key=lambda f: f.size)
            raise FaceTooSmallError(
                f"{len(ordered)} face(s) found in {where}, but the largest is only {biggest.size:.0f}px "
                f"(minimum {min_face_size:g}px): use a photo where the face is bigger, or lower "
                f"min_face_size (results from tiny faces are poor)",
                image_name=image_name,
                index=index,
            )
        if which == "all":
            skipped = len(ordered) - len(usable)
            if skipped:
                logger.info("%s: skipping %d face(s) smaller than %gpx", where, skipped, min_face_size)
            return usable
        return [max(usable, key=lambda f: f.area)]
    if isinstance(which, (bool, np.bool_)) or not isinstance(which, (int, np.integer)):
        raise ValueError(f"which face: expected 'largest', 'all' or a face number, got {which!r}")
    number = int(which)
    if not -len(ordered) <= number < len(ordered):
        raise ValueError(
            f"face {number} requested in {where}, but only {len(ordered)} face(s) were found "
            f"(numbered 0..{len(ordered) - 1} left to right)"
        )
    chosen = ordered[number]
    if chosen.size < min_face_size:
        raise FaceTooSmallError(
            f"face {chosen.index} in {where} is only {chosen.size:.0f}px (minimum {min_face_size:g}px): "
            f"use a photo where the face is bigger, or lower min_face_size",
            image_name=image_name,
            index=index,
        )
    return [chosen]
