"""ComfyUI adapters for the ``cradle2cane`` core: layout conversion, model folders, progress and
cancel. No model math lives here. ComfyUI loads them through the pack's ``comfy_entrypoint``."""
