"""insightface model packs: where they are, which ONNX files in them detect faces and estimate age
and gender, and loading them once (cached) on the chosen onnxruntime providers.

insightface and onnxruntime are imported only when a pack is loaded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

logger = logging.getLogger(__name__)

PACK_NAMES: tuple[str, ...] = ("buffalo_l", "antelopev2")
"""insightface packs that hold an SCRFD detector and the genderage model, in the order searched."""
PACK_URLS: dict[str, str] = {
    "buffalo_l": "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
    "antelopev2": "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
}
CACHE_SIZE: int = 4
"""Loaded packs kept, keyed by (pack folder, providers)."""

Providers = Union[Literal["auto", "cpu", "cuda"], Sequence[str]]
PackSpec = Union[str, Path, tuple[Union[str, Path], str]]


# --------------------------------------------------------------------------- optional imports


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
class LoadedPack:
    """A pack's detector and genderage model, with the lock that serialises their use."""

    detector: Any
    genderage: Any | None
    providers: list[str]
    lock: threading.Lock
    fixed_input: tuple[int, int] | None
    """(width, height) when the detector was exported with a fixed input size (e.g. 640x640);
    ``None`` when it takes any size."""


_CACHE: OrderedDict[tuple[str, tuple[str, ...]], LoadedPack] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_detector_cache() -> None:
    """Forget loaded packs (frees their ONNX sessions once no detector uses them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _load_pack(pack_dir: Path, providers: list[str]) -> LoadedPack:
    ort = _import_onnxruntime()
    model_zoo = _import_model_zoo()
    ort.set_default_logger_severity(3)
    detector = genderage = None
    for path in sorted(pack_dir.glob("*.onnx")):
        try:
            task = _onnx_task(path)
            if task is None or (task == "detection" and detector is not None) or (
                task == "genderage" and genderage is not None
            ):
                continue
            # insightface prints provider and normalisation details; keep them out of the user's console.
            with contextlib.redirect_stdout(io.StringIO()):
                model = model_zoo.get_model(str(path), providers=providers)
        except Exception as exc:  # onnx/protobuf/onnxruntime raise many types, none naming the file
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            url = PACK_URLS.get(pack_dir.name, PACK_URLS["buffalo_l"])
            raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {first_line}); "
                             f"re-download the pack from {url}") from exc
        if model is None or getattr(model, "taskname", None) != task:
            logger.debug("insightface did not route %s as %s; skipped", path, task)
            continue
        if task == "detection" and type(model).__name__ != "SCRFD":
            # insightface 0.7.x routes every detector to RetinaFace, whose post-processing cannot
            # read batched outputs ([1, N, k], as fixed-size exports have); its SCRFD class reads both.
            from insightface.model_zoo.scrfd import SCRFD

            model = SCRFD(model_file=str(path), session=model.session)
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
        detector.prepare(0, det_thresh=0.5)  # the input size is given on every call
        if genderage is not None:
            genderage.prepare(0)
    active = list(detector.session.get_providers())
    if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in active:
        logger.warning(
            "face detector asked for CUDA but onnxruntime runs it on %s (CUDA/cuDNN libraries "
            "not found or not matching); detection still works, only slower", ", ".join(active)
        )
    logger.debug("loaded face pack %s on %s", pack_dir, ", ".join(active))
    return LoadedPack(detector, genderage, active, threading.Lock(), _fixed_input(detector))


def _fixed_input(detector: Any) -> tuple[int, int] | None:
    """(width, height) of a detector whose ONNX input has fixed spatial sizes."""
    height, width = list(detector.session.get_inputs()[0].shape)[2:4]
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    return None


def loaded_pack(pack_dir: Path, providers: list[str]) -> LoadedPack:
    """The pack in ``pack_dir`` loaded on ``providers``: once, then from a small cache."""
    key = (str(pack_dir.resolve()), tuple(providers))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        loaded = _load_pack(pack_dir, providers)
        _CACHE[key] = loaded
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return loaded


