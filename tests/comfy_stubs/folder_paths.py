"""Test stand-in for ComfyUI's ``folder_paths`` (same functions and behaviour, fewer of them).

``use_base_directory(path)`` plays ComfyUI's ``--base-directory``.
"""

from __future__ import annotations

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
base_path = models_dir = ""


def use_base_directory(path: str) -> None:
    global base_path, models_dir
    base_path = os.path.abspath(path)
    models_dir = os.path.join(base_path, "models")
    folder_names_and_paths.clear()
    folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions)
    folder_names_and_paths["diffusers"] = ([os.path.join(models_dir, "diffusers")], {"folder"})


use_base_directory(os.environ.get("COMFY_STUB_BASE", os.getcwd()))


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    folder_name = map_legacy(folder_name)
    if folder_name in folder_names_and_paths:
        paths, _ = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def get_filename_list(folder_name: str) -> list[str]:
    paths, extensions = folder_names_and_paths[map_legacy(folder_name)]
    found = set()
    for root in paths:
        for dirpath, subdirs, files in os.walk(root, followlinks=True):
            subdirs[:] = [d for d in subdirs if d != ".git"]
            for name in files:
                if not extensions or os.path.splitext(name)[-1].lower() in extensions:
                    found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        path = os.path.join(root, filename)
        if os.path.isfile(path):
            return path
    return None
