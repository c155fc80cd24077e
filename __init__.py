"""Cradle2Cane lifespan face aging for ComfyUI: the pack's entry point (V3 node API).

Importing this file does nothing heavy; ComfyUI calls ``comfy_entrypoint`` to get the nodes. The
standalone core is the ``cradle2cane`` package beside this file and runs without ComfyUI.
"""


async def comfy_entrypoint():
    from .nodes.extension import Cradle2CaneExtension

    return Cradle2CaneExtension()
