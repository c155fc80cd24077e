"""Faces in the wild: find them with an insightface model pack, with age and gender estimates.

Cradle2Cane was trained on FFHQ crops, so a photo must be turned into such crops first
(``align``) and the aged crops put back afterwards. :class:`FaceDetector` runs an insightface pack
(``buffalo_l``, ``antelopev2``: SCRFD detector plus the genderage model) through insightface's own
model router, on CUDA when onnxruntime offers it. insightface and onnxruntime are imported only
when needed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from ..files.images import to_rgb_uint8

logger = logging.getLogger(__name__)

PACK_NAMES: tuple[str, ...] = ("buffalo_l", "antelopev2")
"""insightface packs that hold an SCRFD detector and the genderage model, in the order searched."""
PACK_URLS: dict[str, str] = {
    "buffalo_l": "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
    "antelopev2": "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
}
MIN_FACE_SIZE: int = 32
"""Faces whose box is narrower than this (photo pixels) are refused: the aligned crop would be mush."""
MIN_DET_SIZE: int = 160
"""The smallest detector input tried when a large close-up face is missed."""
CACHE_SIZE: int = 4
"""Loaded packs kept, keyed by (pack folder, providers, det_size)."""

Providers = Union[Literal["auto", "cpu", "cuda"], Sequence[str]]
Which = Union[Literal["largest", "all"], int]
PackSpec = Union[str, Path, tuple[Union[str, Path], str]]


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


# --------------------------------------------------------------------------- optional imports


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as error:
        raise ImportError("face alignment needs OpenCV: pip install opencv-python-headless") from error
    return cv2


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "face detection needs ONNX Runtime: pip install onnxruntime "
            "(the GPU build of ONNX Runtime works too)"
        ) from error
    return onnxruntime


def _import_model_zoo() -> Any:
    _import_onnxruntime()
    try:
        from insightface.model_zoo import model_zoo
    except ImportError as error:
        raise ImportError("face detection needs insightface: pip install insightface") from error
    return model_zoo


# --------------------------------------------------------------------------- model packs


def _pack_folder(candidate: Path) -> Path | None:
    """``candidate`` if it holds .onnx files; also accepts the ``antelopev2/antelopev2``
    nesting the release zip produces when unpacked into a folder of its own name."""
    if candidate.is_dir():
        if any(candidate.glob("*.onnx")):
            return candidate
        nested = candidate / candidate.name
        if nested.is_dir() and any(nested.glob("*.onnx")):
            return nested
    return None


def resolve_pack_dir(pack: PackSpec) -> Path:
    """The folder of ONNX files for ``pack``: a folder path, or ``(root, name)`` in
    insightface's ``root/models/name`` layout (ComfyUI: ``models/insightface``)."""
    if isinstance(pack, tuple):
        root, name = Path(pack[0]).expanduser(), str(pack[1])
        candidates = [root / "models" / name, root / name]
    else:
        name = Path(pack).name
        candidates = [Path(pack).expanduser()]
    for candidate in candidates:
        found = _pack_folder(candidate)
        if found is not None:
            return found
    searched = ", ".join(str(c) for c in candidates)
    url = PACK_URLS.get(name, PACK_URLS["buffalo_l"])
    raise FileNotFoundError(
        f"insightface pack {name!r} not found or holds no .onnx files (searched {searched}); "
        f"download {url} and unzip it so that {candidates[0]} holds the .onnx files"
    )


def find_insightface_pack(models_dir: str | Path, name: str | None = None) -> Path:
    """Find a pack under a standalone ``--models DIR`` (``DIR/insightface/models/<pack>``).

    With ``name`` None the first of :data:`PACK_NAMES` present wins.
    """
    models_dir = Path(models_dir).expanduser()
    names = [name] if name else list(PACK_NAMES)
    searched: list[Path] = []
    for pack in names:
        for candidate in (models_dir / "insightface" / "models" / pack, models_dir / "insightface" / pack):
            searched.append(candidate)
            found = _pack_folder(candidate)
            if found is not None:
                return found
    wanted = name or "buffalo_l"
    raise FileNotFoundError(
        f"no insightface face pack found (searched {', '.join(str(s) for s in searched)}); download "
        f"{PACK_URLS.get(wanted, PACK_URLS['buffalo_l'])} and unzip it to "
        f"{models_dir / 'insightface' / 'models' / wanted}"
    )


def resolve_providers(providers: Providers = "auto") -> list[str]:
    """onnxruntime execution providers: ``auto`` = CUDA when this onnxruntime build has it,
    always with the CPU as fallback; ``cpu``; ``cuda`` (an error if unavailable); or an
    explicit list passed through."""
    ort = _import_onnxruntime()
    available = list(ort.get_available_providers())
    cuda = "CUDAExecutionProvider"
    if isinstance(providers, str):
        choice = providers.lower()
        if choice == "cpu":
            return ["CPUExecutionProvider"]
        if choice in ("auto", "cuda"):
            if cuda in available:
                return [cuda, "CPUExecutionProvider"]
            if choice == "cuda":
                raise ValueError(
                    f"providers='cuda' but this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(available)}); install the GPU build of onnxruntime "
                    f"or use providers='auto' / 'cpu'"
                )
            return ["CPUExecutionProvider"]
        raise ValueError(f"providers must be 'auto', 'cpu', 'cuda' or a list of provider names, got {providers!r}")
    chosen = [str(p) for p in providers]
    if not chosen:
        raise ValueError("providers: the list is empty")
    return chosen


def _onnx_task(path: Path) -> str | None:
    """What insightface's router would make of ``path``, read from the graph alone so
    that recognition / landmark models in the pack are never loaded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if len(graph.output) >= 5:
        return "detection"
    if not graph.input:
        return None
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[2] == 96 and dims[3] == 96:
        return "genderage"  # or another attribute model: the router's taskname decides
    return None


@dataclass
class _LoadedPack:
    detector: Any
    genderage: Any | None
    providers: list[str]
    lock: threading.Lock


_CACHE: OrderedDict[tuple[str, tuple[str, ...], int], _LoadedPack] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_detector_cache() -> None:
    """Forget loaded packs (frees their ONNX sessions once no detector uses them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _load_pack(pack_dir: Path, providers: list[str], det_size: int) -> _LoadedPack:
    ort = _import_onnxruntime()
    model_zoo = _import_model_zoo()
    ort.set_default_logger_severity(3)
    detector = genderage = None
    for path in sorted(pack_dir.glob("*.onnx")):
        task = _onnx_task(path)
        if task is None or (task == "detection" and detector is not None) or (
            task == "genderage" and genderage is not None
        ):
            continue
        # insightface prints provider and normalisation details; keep them out of the user's console.
        with contextlib.redirect_stdout(io.StringIO()):
            model = model_zoo.get_model(str(path), providers=providers)
        if model is None or getattr(model, "taskname", None) != task:
            logger.debug("insightface did not route %s as %s; skipped", path, task)
            continue
        if task == "detection":
            detector = model
        else:
            genderage = model
    if detector is None:
        raise FileNotFoundError(
            f"no face detector (SCRFD .onnx with 5+ outputs) in {pack_dir}; use a complete "
            f"buffalo_l or antelopev2 pack ({PACK_URLS['buffalo_l']})"
        )
    if genderage is None:
        logger.warning("no genderage model in %s: source age and gender will not be estimated", pack_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        detector.prepare(0, input_size=(det_size, det_size), det_thresh=0.5)
        if genderage is not None:
            genderage.prepare(0)
    active = list(detector.session.get_providers())
    if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in active:
        logger.warning(
            "face detector asked for CUDA but onnxruntime runs it on %s (CUDA/cuDNN libraries "
            "not found or not matching); detection still works, only slower", ", ".join(active)
        )
    logger.debug("loaded face pack %s on %s", pack_dir, ", ".join(active))
    return _LoadedPack(detector, genderage, active, threading.Lock())


def _cached_pack(pack_dir: Path, providers: list[str], det_size: int) -> _LoadedPack:
    key = (str(pack_dir.resolve()), tuple(providers), int(det_size))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        loaded = _load_pack(pack_dir, providers, det_size)
        _CACHE[key] = loaded
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return loaded


# --------------------------------------------------------------------------- detection


class FaceDetector:
    """insightface detection + age/gender estimate, loaded once and shared.

    ``pack`` is the pack folder, or ``(root, name)`` with insightface's
    ``root/models/name`` layout (ComfyUI: ``(models/insightface, "buffalo_l")``).
    Loading happens on first use and is cached per (pack, providers, det_size).
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
        if det_size < MIN_DET_SIZE or det_size % 32:
            raise ValueError(f"det_size must be a multiple of 32 and at least {MIN_DET_SIZE}, got {det_size}")
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

    @property
    def work_side(self) -> int:
        """Photos with a longer side are detected on an area-downscaled copy of this size
        (better than letting the detector's own bilinear resize alias a 4000px photo)."""
        return max(2 * self.det_size, 1024)

    def retry_sizes(self) -> list[int]:
        """Detector input sizes tried in turn until one finds a face: a face filling most of
        the frame is too big for SCRFD's largest anchors at ``det_size``, but not at half."""
        sizes = [self.det_size]
        while sizes[-1] // 2 >= MIN_DET_SIZE:
            sizes.append((sizes[-1] // 2) // 32 * 32)
        return sizes

    def _pack(self) -> _LoadedPack:
        return _cached_pack(self.pack_dir, resolve_providers(self.providers), self.det_size)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in ``image`` (RGB/RGBA/grey, uint8 or float 0..1), numbered and ordered
        left to right; an empty list when there are none."""
        cv2 = _import_cv2()
        rgb = to_rgb_uint8(image)
        height, width = rgb.shape[:2]
        scale_xy = np.ones(2)
        if max(height, width) > self.work_side:
            scale = self.work_side / max(height, width)
            small = (max(1, round(width * scale)), max(1, round(height * scale)))
            logger.debug("detecting on a downscaled %dx%d copy of the %dx%d photo", *small, width, height)
            rgb = cv2.resize(rgb, small, interpolation=cv2.INTER_AREA)
            scale_xy = np.array([small[0] / width, small[1] / height])
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        pack = self._pack()
        boxes = kpss = None
        with pack.lock:
            pack.detector.det_thresh = self.det_thresh  # both old and new SCRFD read it here
            for size in self.retry_sizes():
                boxes, kpss = pack.detector.detect(bgr, input_size=(size, size), max_num=0)
                if len(boxes):
                    if size != self.det_size:
                        logger.info("face found at det_size %d after none at %d", size, self.det_size)
                    break
                logger.debug("no face at det_size %d", size)
            faces = []
            for i in range(0 if boxes is None else len(boxes)):
                age, gender = self._age_gender(pack, bgr, boxes[i], None if kpss is None else kpss[i])
                faces.append((boxes[i], None if kpss is None else kpss[i], age, gender))
        results = []
        for box, kps, age, gender in faces:
            bbox = np.asarray(box[:4], np.float64).reshape(2, 2)
            bbox = ((bbox + 0.5) / scale_xy - 0.5).reshape(4)
            if kps is None:
                raise ValueError(f"the detector in {self.pack_dir} gives no landmarks; use an SCRFD *kps* model")
            points = (np.asarray(kps, np.float64) + 0.5) / scale_xy - 0.5
            results.append(DetectedFace(bbox=bbox, score=float(box[4]), kps=points, age=age, gender=gender))
        results.sort(key=lambda f: (f.bbox[0] + f.bbox[2]) / 2)
        return [replace(face, index=i) for i, face in enumerate(results)]

    @staticmethod
    def _age_gender(
        pack: _LoadedPack, bgr: np.ndarray, box: np.ndarray, kps: np.ndarray | None
    ) -> tuple[int | None, Literal["male", "female"] | None]:
        if pack.genderage is None:
            return None, None
        from insightface.app.common import Face

        face = Face(bbox=np.asarray(box[:4], np.float32), kps=kps, det_score=float(box[4]))
        gender, age = pack.genderage.get(bgr, face)
        return int(age), ("male" if int(gender) == 1 else "female")

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
            f"no face found in {where}{used}. Try a lower det_thresh (e.g. 0.3), another det_size "
            f"(e.g. 1024 for small faces in a big photo, 320 for a close-up), or, if the image is "
            f"already an aligned face crop, skip detection (--aligned on the command line)",
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
