"""The pack's ``ComfyExtension``: registers model folders and lists the nodes."""

from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

from . import models

logger = logging.getLogger(__name__)


NODES = (  # (module, class) in menu order
    ("loader", "LoadCradle2Cane"),
    ("faces", "FaceAlign"),
    ("aging", "AdaNIFirstPass"),
    ("aging", "IdentityEmbed"),
    ("aging", "IdentitySecondPass"),
    ("faces", "PasteFaceBack"),
    ("sweep", "LifespanSweep"),
    ("photo", "AgePhoto"),
)


def node_list() -> list[type[io.ComfyNode]]:
    """Every node whose module imports; one that fails is skipped with a warning saying why."""
    found = []
    for module_name, class_name in NODES:
        try:
            module = importlib.import_module(f".{module_name}", __package__)
        except ImportError as exc:
            logger.warning("Cradle2Cane: node %s not available: %s", class_name, exc)
            continue
        found.append(getattr(module, class_name))
    return found


class Cradle2CaneExtension(ComfyExtension):
    async def on_load(self) -> None:
        models.register_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        models.register_folders()  # idempotent; ComfyUI 0.3.64 does not call on_load
        return node_list()
