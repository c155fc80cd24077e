"""Cradle2Cane lifespan face aging: the standalone core (no ComfyUI needed).

Sub-packages by idea: ``method`` (the paper's computations), ``loading`` (released files),
``runtime`` (precision, offload, diagnostics), ``faces`` (detect, align, paste back), ``files``
(reading photos, atomic writes), ``testing`` (tiny models and fixtures), ``tools`` (command line,
bench, evaluate). The facade ``Cradle2Cane`` and ``age_photo`` sit on top.

Importing this package is cheap: torch, diffusers and friends load on first use of a name below.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Cradle2Cane": ".pipeline",
    "AgingResult": ".pipeline",
    "FirstPassOutput": ".pipeline",
    "age_photo": ".photo",
    "PhotoAgingResult": ".photo",
    "adani_strength": ".method.adani",
    "aging_prompt": ".method.prompts",
    "lora_enabled": ".method.lora",
    "svr_arcface": ".method.identity",
    "rotate_clip": ".method.identity",
    "slerp": ".method.identity",
    "Settings": ".loading.settings",
    "SettingsError": ".loading.settings",
    "ModelFileError": ".loading.paths",
    "ModelPaths": ".loading.paths",
    "write_tiny_models": ".testing.tiny",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cradle2cane' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .loading.paths import ModelFileError, ModelPaths
    from .loading.settings import Settings, SettingsError
    from .method.adani import adani_strength
    from .method.identity import rotate_clip, slerp, svr_arcface
    from .method.lora import lora_enabled
    from .method.prompts import aging_prompt
    from .photo import PhotoAgingResult, age_photo
    from .pipeline import AgingResult, Cradle2Cane, FirstPassOutput
    from .testing.tiny import write_tiny_models
