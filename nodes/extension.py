"""The pack's ``ComfyExtension``: registers model folders and lists the nodes."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from . import models
from .aging import AdaNIFirstPass, IdentityEmbed, IdentitySecondPass
from .faces import FaceAlign, PasteFaceBack
from .loader import LoadCradle2Cane
from .photo import AgePhoto
from .sweep import LifespanSweep

NODES = (LoadCradle2Cane, FaceAlign, AdaNIFirstPass, IdentityEmbed, IdentitySecondPass, PasteFaceBack,
         LifespanSweep, AgePhoto)  # menu order


class Cradle2CaneExtension(ComfyExtension):
    async def on_load(self) -> None:
        models.register_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        models.register_folders()  # idempotent; ComfyUI 0.3.64 does not call on_load
        return list(NODES)
