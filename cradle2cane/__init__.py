"""Cradle2Cane lifespan face aging: the standalone core (no ComfyUI needed).

Sub-packages by idea: ``method`` (the paper's computations), ``loading`` (released files),
``runtime`` (precision, offload, diagnostics), ``faces`` (detect, align, paste back), ``files``
(reading photos, atomic writes), ``testing`` (tiny models and fixtures), ``tools`` (command line,
bench, evaluate). The facade ``Cradle2Cane`` and ``age_photo`` sit on top.

Importing this package is cheap: torch, diffusers and friends load on first use of a name below.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "AgingPlan", "AgingResult", "Cradle2Cane", "FirstPassOutput", "ModelFileError", "ModelPaths",
    "NonFiniteResultError", "PhotoAgingResult", "Settings", "SettingsError", "__version__", "adani_strength",
    "age_photo", "aging_prompt", "lora_enabled", "rotate_clip", "slerp", "svr_arcface", "write_tiny_models",
]


class _NoTorchvisionAdvice(logging.Filter):
    """transformers tells every user without torchvision to install it, when diffusers merely
    imports an image-processor name this package never uses; torchvision is not needed here and
    PyPI's build breaks a CPU-only torch. Only that one message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in str(record.msg)


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionAdvice())


def __getattr__(name: str):
    """Import the module that defines ``name`` on first use (PEP 562), so the package stays cheap."""
    if name in ("Cradle2Cane", "AgingResult", "FirstPassOutput", "NonFiniteResultError"):
        from . import pipeline as module
    elif name == "AgingPlan":
        from .method import plan as module
    elif name in ("age_photo", "PhotoAgingResult"):
        from . import photo as module
    elif name == "adani_strength":
        from .method import adani as module
    elif name == "aging_prompt":
        from .method import prompts as module
    elif name == "lora_enabled":
        from .method import lora as module
    elif name in ("svr_arcface", "rotate_clip", "slerp"):
        from .method import identity as module
    elif name in ("Settings", "SettingsError"):
        from .loading import settings as module
    elif name in ("ModelFileError", "ModelPaths"):
        from .loading import paths as module
    elif name == "write_tiny_models":
        from .testing import tiny as module
    else:
        raise AttributeError(f"module 'cradle2cane' has no attribute {name!r}")
    value = getattr(module, name)
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
    from .method.plan import AgingPlan
    from .pipeline import AgingResult, Cradle2Cane, FirstPassOutput, NonFiniteResultError
    from .testing.tiny import write_tiny_models
