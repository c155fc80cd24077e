"""Running a loaded model: precision, model CPU offload, diagnostics."""

MEMORY_MODES = ("default", "offload", "low-vram")
"""``default``: every component on the device; ``offload``: model CPU offload by component group;
``low-vram``: offload plus VAE slicing and tiling (see ``runtime.offload``)."""
