"""Where ComfyUI keeps our files, the dropdowns listing them, and the check that a choice stays inside.

Folders (each also settable in ``extra_model_paths.yaml``):
``models/cradle2cane/`` the released Cradle2Cane folder(s), ``backbone.pth``, ``clip-vit-large-patch14/``,
``sdxl-vae-fp16-fix/`` (and optionally ``sdxl-turbo/``); the SDXL-Turbo base from
``models/checkpoints`` (single file) or ``models/diffusers`` (folder); insightface packs in
``models/insightface/models/<pack>``.

A dropdown value that names a file arrives as a plain string in ``POST /prompt``; before it is
turned into a path it must be one of the options listed from these folders (:func:`check_choice`), so
a crafted prompt cannot reach outside them, and the refusal names no path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import folder_paths

from ..cradle2cane.loading import paths as W

C2C_FOLDER = "cradle2cane"
INSIGHTFACE_FOLDER = "insightface"
BASE_AUTO = "auto"
CHECKPOINTS, DIFFUSERS = "checkpoints", "diffusers"
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")


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


# ----------------------------------------------------------------------------- the dropdowns


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


def refusal(value: str, options: Callable[[], list[str]], node: str, input_name: str) -> str | None:
    """Why ``value`` cannot be used, or ``None`` when the dropdown lists it now. A crafted ``../..``,
    an absolute path or a file that is gone is refused with a message that names no path, so it
    neither confirms nor denies that something exists elsewhere."""
    if isinstance(value, str) and value in options():
        return None
    return (f"{node}: {input_name} {str(value)[:200]!r} is not one of the choices found in the model folders; "
            f"refresh the node list (press R) and pick one from the dropdown")


def check_choice(value: str, options: Callable[[], list[str]], node: str, input_name: str) -> str:
    """``value`` if the dropdown lists it now, else a ``ValueError`` saying why (:func:`refusal`)."""
    problem = refusal(value, options, node, input_name)
    if problem:
        raise ValueError(problem)
    return value


# ----------------------------------------------------------------------------- choices -> paths


def insightface_root(pack: str) -> Path:
    """The insightface root (``…/insightface``) whose ``models/<pack>`` exists; else the first root,
    and the core's error will say where to unzip the pack."""
    check_choice(pack, insightface_options, "Face detector", "detector")
    roots = _roots(INSIGHTFACE_FOLDER)
    for root in roots:
        if (root / "models" / pack).is_dir() or (root / pack).is_dir():
            return root
    return roots[0]


def resolve_cradle2cane(name: str) -> tuple[Path, Path]:
    """(models root, Cradle2Cane folder) for a dropdown value."""
    check_choice(name, cradle2cane_options, "Load Cradle2Cane", "cradle2cane")
    roots = _roots(C2C_FOLDER)
    for root in roots:
        folder = root if name == "." else root / name
        if (folder / W.LORA_FILE).is_file():
            return root, folder
    searched = ", ".join(str(r if name == "." else r / name) for r in roots)
    raise W.ModelFileError(
        f"Load Cradle2Cane: no {W.LORA_FILE} in the Cradle2Cane folder {name!r} (searched {searched}). "
        f"Get it from {W.source_of(W.C2C_DIR)}, into {roots[0]} (it also brings backbone.pth), and put "
        f"clip-vit-large-patch14/ and sdxl-vae-fp16-fix/ beside it; see docs/comfyui.md.")


def _base_in(folder: Path) -> Path | None:
    """The SDXL-Turbo base the core finds in ``folder``, or None."""
    try:
        return W.find_base(folder)
    except W.ModelFileError:
        return None


def resolve_base(choice: str, models_root: Path) -> Path | None:
    """The SDXL-Turbo base for a dropdown value; ``None`` lets the core find it in ``models_root``."""
    check_choice(choice, base_options, "Load Cradle2Cane", "base")
    if choice == BASE_AUTO:
        if _base_in(models_root) is not None:
            return None
        for name in W.BASE_SINGLE_FILES:
            path = folder_paths.get_full_path(CHECKPOINTS, name)
            if path:
                return Path(path)
        for root in _roots(DIFFUSERS):
            base = _base_in(root)
            if base is not None:
                return base
        raise W.ModelFileError(
            f"Load Cradle2Cane: base 'auto' found no SDXL-Turbo: looked for {W.BASE_DIR}/ and "
            f"{' / '.join(W.BASE_SINGLE_FILES)} in {models_root}, the checkpoints folders "
            f"{folder_paths.get_folder_paths(CHECKPOINTS)} and {W.BASE_DIR}/ in the diffusers folders. "
            f"Put {W.BASE_SINGLE_FILES[0]} ({W.source_of('single')}) into models/checkpoints, "
            f"or pick the base in the dropdown.")
    kind, _, rel = choice.partition("/")
    found = folder_paths.get_full_path(CHECKPOINTS, rel) if kind == CHECKPOINTS else next(
        (root / rel for root in _roots(DIFFUSERS) if (root / rel / "model_index.json").is_file()), None)
    if found is None:  # listed a moment ago, gone now
        raise W.ModelFileError(f"Load Cradle2Cane: base {choice!r} is no longer in the {kind} folders; refresh "
                               f"the node list (press R) and pick an existing one")
    return Path(found)
