"""Faces in the wild: detect, FFHQ-style align, paste back, and read photos.

Cradle2Cane was trained on FFHQ crops, so a photo must be turned into such
crops first and the aged crops put back afterwards.  The reference code had
none of this (it centre-cropped the input); this module supplies it:

* :class:`FaceDetector` runs an insightface model pack (``buffalo_l``,
  ``antelopev2``: SCRFD detector plus the genderage model) through
  insightface's own model router, on CUDA when onnxruntime offers it.
* :func:`align_face` warps a face to the FFHQ square from its five landmarks.
* :func:`paste_back` warps an aged crop back into the photo under a soft mask,
  leaving every pixel outside the mask untouched.
* :func:`load_image` reads a photo the way a person sees it (EXIF rotation,
  grey / palette / 16-bit / alpha handled).

Images are numpy arrays in RGB order: uint8 0..255 or float 0..1.
insightface, onnxruntime and OpenCV are imported only when needed.
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
ColorMatch = Literal["none", "mean", "mean_std"]


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


# --------------------------------------------------------------------------- image helpers


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


def _to_float_rgb(image: np.ndarray) -> np.ndarray:
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
        raise _image_file_error(
            f"cannot read image {path}: {error} (is it a complete PNG/JPEG/WebP/TIFF file?)"
        ) from error


def _image_file_error(message: str) -> ValueError:
    """The project's ImageFileError when available (one error type for image files)."""
    try:
        from .images import ImageFileError
    except ImportError:  # pragma: no cover - images.py is optional here
        return ValueError(message)
    return ImageFileError(message)


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
    crop = _to_float_rgb(array[y0:y1, x0:x1])
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
    aged = _to_float_rgb(np.asarray(aged_face))
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
    original = _to_float_rgb(array[y0:y1, x0:x1])
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


__all__ = [
    "AlignedFace",
    "DetectedFace",
    "FaceDetector",
    "FaceTooSmallError",
    "MIN_FACE_SIZE",
    "NoFaceError",
    "PACK_NAMES",
    "align_face",
    "align_faces",
    "clear_detector_cache",
    "detect_and_align",
    "face_mask",
    "ffhq_quad",
    "find_insightface_pack",
    "load_image",
    "paste_back",
    "paste_back_many",
    "quad_matrix",
    "resolve_pack_dir",
    "resolve_providers",
    "select_faces",
    "to_rgb_uint8",
]
