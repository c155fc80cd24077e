"""Where ComfyUI keeps our files, a small cache of loaded models, and moving them on and off the GPU.

Folders (each also settable in ``extra_model_paths.yaml``):
``models/cradle2cane/`` the released Cradle2Cane folder(s), ``backbone.pth``, ``clip-vit-large-patch14/``,
``sdxl-vae-fp16-fix/`` (and optionally ``sdxl-turbo/``); the SDXL-Turbo base from
``models/checkpoints`` (single file) or ``models/diffusers`` (folder); insightface packs in
``models/insightface/models/<pack>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import comfy.model_management as mm
import folder_paths
import torch

from ..cradle2cane.loading import paths as W
from .handles import ModelHandle

logger = logging.getLogger(__name__)

C2C_FOLDER = "cradle2cane"
INSIGHTFACE_FOLDER = "insightface"
BASE_AUTO = "auto"
CHECKPOINTS, DIFFUSERS = "checkpoints", "diffusers"
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")
DEVICES = ("auto", "cpu")
BETWEEN_RUNS = "offload between runs"
MEMORY = {  # loader choice -> the core's memory mode
    "default": "default",
    BETWEEN_RUNS: "default",
    "model offload": "offload",
    "low-vram": "low-vram",
}
CACHE_SIZE = 1
"""Loaded models kept across loader runs, keyed by (files, dtype, device, memory mode). One SDXL is big."""

_cache: OrderedDict[tuple, ModelHandle] = OrderedDict()
_cache_lock = threading.Lock()


# ----------------------------------------------------------------------------- folders


def register_folders() -> None:
    """Add ``models/cradle2cane`` and ``models/insightface`` to folder_paths, after any paths
    ``extra_model_paths.yaml`` already gave these keys (theirs stay first)."""
    for name in (C2C_FOLDER, INSIGHTFACE_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def _roots(name: str) -> list[Path]:
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(name)]
    except KeyError:
        register_folders()
        return [Path(p) for p in folder_paths.get_folder_paths(name)]


def cradle2cane_options() -> list[str]:
    """Folders holding a Cradle2Cane LoRA, relative to a ``cradle2cane`` root. The released name
    is always offered, so a missing download is reported by the loader with instructions."""
    found = {W.C2C_DIR}
    for root in _roots(C2C_FOLDER):
        if (root / W.LORA_FILE).is_file():
            found.add(".")
        for lora in root.glob(f"*/{W.LORA_FILE}"):
            found.add(lora.parent.name)
    return sorted(found, key=lambda n: (n != W.C2C_DIR, n.lower()))


def base_options() -> list[str]:
    """``auto``, then ``checkpoints/<file>`` single files and ``diffusers/<folder>`` folders."""
    options = [BASE_AUTO]
    try:
        files = folder_paths.get_filename_list(CHECKPOINTS)
    except KeyError:
        files = []
    options += [f"{CHECKPOINTS}/{f}" for f in files if f.lower().endswith(SINGLE_FILE_SUFFIXES)]
    folders = set()
    for root in _roots(DIFFUSERS):
        for pattern in ("*/model_index.json", "*/*/model_index.json"):  # explicit levels follow symlinks
            folders.update(index.parent.relative_to(root).as_posix() for index in root.glob(pattern))
    options += [f"{DIFFUSERS}/{f}" for f in sorted(folders)]
    return options


def insightface_options() -> list[str]:
    """Packs in ``<insightface root>/models/*`` that hold ONNX files; ``buffalo_l`` always offered."""
    found = {"buffalo_l"}
    for root in _roots(INSIGHTFACE_FOLDER):
        for onnx in root.glob("models/*/*.onnx"):
            found.add(onnx.parent.name)
        for onnx in root.glob("models/*/*/*.onnx"):  # antelopev2/antelopev2 as the zip unpacks
            if onnx.parent.name == onnx.parent.parent.name:
                found.add(onnx.parent.name)
    return sorted(found, key=lambda n: (n != "buffalo_l", n))


def insightface_root(pack: str) -> Path:
    """The insightface root (``…/insightface``) whose ``models/<pack>`` exists; else the first root,
    and the core's error will say where to unzip the pack."""
    roots = _roots(INSIGHTFACE_FOLDER)
    for root in roots:
        if (root / "models" / pack).is_dir() or (root / pack).is_dir():
            return root
    return roots[0]


def resolve_cradle2cane(name: str) -> tuple[Path, Path]:
    """(models root, Cradle2Cane folder) for a dropdown value."""
    roots = _roots(C2C_FOLDER)
    for root in roots:
        folder = root if name == "." else root / name
        if (folder / W.LORA_FILE).is_file():
            return root, folder
    searched = ", ".join(str(r if name == "." else r / name) for r in roots)
    raise W.ModelFileError(
        f"Load Cradle2Cane: no {W.LORA_FILE} in the Cradle2Cane folder {name!r} (searched {searched}). "
        f"Download it with: huggingface-cli download byliutao/Cradle2Cane --local-dir {roots[0]} "
        f"(it also brings backbone.pth), and put clip-vit-large-patch14/ and sdxl-vae-fp16-fix/ beside it; "
        f"see the README's model table.")


def resolve_base(choice: str, models_root: Path) -> Path | None:
    """The SDXL-Turbo base for a dropdown value; ``None`` lets the core find it in ``models_root``."""
    if choice == BASE_AUTO:
        if (models_root / W.BASE_DIR / "model_index.json").is_file() or \
                any((models_root / n).is_file() for n in W.BASE_SINGLE_FILES):
            return None
        for name in W.BASE_SINGLE_FILES:
            path = folder_paths.get_full_path(CHECKPOINTS, name)
            if path:
                return Path(path)
        for root in _roots(DIFFUSERS):
            if (root / W.BASE_DIR / "model_index.json").is_file():
                return root / W.BASE_DIR
        raise W.ModelFileError(
            f"Load Cradle2Cane: base 'auto' found no SDXL-Turbo: looked for {W.BASE_DIR}/ and "
            f"{' / '.join(W.BASE_SINGLE_FILES)} in {models_root}, the checkpoints folders "
            f"{folder_paths.get_folder_paths(CHECKPOINTS)} and {W.BASE_DIR}/ in the diffusers folders. "
            f"Put {W.BASE_SINGLE_FILES[0]} ({W.source_of('single')}) into models/checkpoints, "
            f"or pick the base in the dropdown.")
    kind, _, rel = choice.partition("/")
    if kind == CHECKPOINTS and rel:
        path = folder_paths.get_full_path(CHECKPOINTS, rel)
        if path:
            return Path(path)
    elif kind == DIFFUSERS and rel:
        for root in _roots(DIFFUSERS):
            if (root / rel / "model_index.json").is_file():
                return root / rel
    else:
        raise ValueError(f"Load Cradle2Cane: base {choice!r} is not 'auto', 'checkpoints/<file>' or "
                         f"'diffusers/<folder>'; pick one from the dropdown")
    raise W.ModelFileError(f"Load Cradle2Cane: base {choice!r} not found in the {kind} folders "
                           f"{folder_paths.get_folder_paths(kind)}; refresh the node list (press R) and pick "
                           f"an existing one")


# ----------------------------------------------------------------------------- devices


def compute_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if choice != "auto":
        raise ValueError(f"Load Cradle2Cane: device must be one of {DEVICES}, got {choice!r}")
    return torch.device(mm.get_torch_device())


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _bytes_on_disk(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def _bytes_in_memory(model, module_names=None) -> int:
    modules = model.components()
    return sum(p.numel() * p.element_size() for name, m in modules.items()
               if module_names is None or name in module_names for p in m.parameters())


def load(cradle2cane: str, base: str, precision: str, device: str, memory: str) -> ModelHandle:
    """A ``ModelHandle``, from the cache when the same files, dtype, device and memory mode were loaded."""
    from ..cradle2cane.runtime.precision import resolve_dtype
    from ..cradle2cane.pipeline import Cradle2Cane

    if memory not in MEMORY:
        raise ValueError(f"Load Cradle2Cane: memory must be one of {list(MEMORY)}, got {memory!r}")
    models_root, c2c_dir = resolve_cradle2cane(cradle2cane)
    base_path = resolve_base(base, models_root)
    target = compute_device(device)
    try:
        dtype = resolve_dtype(precision, target)
    except ValueError as exc:
        raise ValueError(f"Load Cradle2Cane: precision: {exc}") from None
    core_mode = MEMORY[memory]
    key = (str(models_root), str(c2c_dir), str(base_path), str(dtype), str(target), core_mode)
    with _cache_lock:
        handle = _cache.get(key)
        if handle is not None:
            _cache.move_to_end(key)
            logger.debug("Cradle2Cane from cache: %s", key)
            return ModelHandle(handle.model, handle.models_dir, handle.device, memory, handle.size_bytes)
        while _cache:  # drop the old model before loading a new one
            _cache.popitem(last=False)
            mm.soft_empty_cache()
        estimate = _bytes_on_disk([p for p in (base_path or models_root / W.BASE_DIR, c2c_dir,
                                               models_root / W.CLIP_DIR, models_root / W.ARCFACE_FILE) if p])
        mm.free_memory(estimate if core_mode == "default" else estimate // 2, target)
        load_to = mm.unet_offload_device() if memory == BETWEEN_RUNS else target
        model = Cradle2Cane.from_pretrained(models_root, base=base_path, cradle2cane_dir=c2c_dir,
                                            device=load_to, dtype=dtype, memory=core_mode)
        # What must fit on the device at once: everything, or with model offload the largest group (UNet).
        needed = _bytes_in_memory(model, None if core_mode == "default" else ("unet",))
        handle = ModelHandle(model, models_root, target, memory, needed)
        _cache[key] = handle
        return handle


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
    mm.soft_empty_cache()


@contextlib.contextmanager
def running(handle: ModelHandle) -> Iterator:
    """The model ready on its device for one node run, with room made in ComfyUI's memory first;
    afterwards (also on errors and cancels) parked off the GPU as the loader's ``memory`` says."""
    model = handle.model
    core_mode = MEMORY[handle.memory]
    if core_mode != "default":
        mm.free_memory(handle.size_bytes, handle.device)  # room for the group that runs
    elif not _same_device(model.device, handle.device):
        mm.free_memory(handle.size_bytes, handle.device)
        model.to(handle.device)
    try:
        yield model
    finally:
        if handle.memory == BETWEEN_RUNS:
            offload_to = torch.device(mm.unet_offload_device())
            if not _same_device(model.device, offload_to):
                model.to(offload_to)
                mm.soft_empty_cache()
        elif core_mode != "default":
            model.release_memory()  # the resident group back to the CPU
            mm.soft_empty_cache()
