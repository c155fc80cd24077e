"""Cradle2Cane lifespan face aging: the standalone core (no ComfyUI needed).

Importing this package is cheap: torch, diffusers and friends load on first use of a name below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Cradle2Cane": "pipeline",
    "AgingResult": "pipeline",
    "FirstPassOutput": "pipeline",
    "adani_strength": "passes",
    "aging_prompt": "passes",
    "lora_enabled": "passes",
    "svr_arcface": "embeddings",
    "rotate_clip": "embeddings",
    "slerp": "embeddings",
    "Settings": "settings",
    "SettingsError": "settings",
    "ModelFileError": "weights",
    "ModelPaths": "weights",
    "write_tiny_models": "tiny",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cradle2cane' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import rotate_clip, slerp, svr_arcface
    from .passes import adani_strength, aging_prompt, lora_enabled
    from .pipeline import AgingResult, Cradle2Cane, FirstPassOutput
    from .settings import Settings, SettingsError
    from .tiny import write_tiny_models
    from .weights import ModelFileError, ModelPaths
