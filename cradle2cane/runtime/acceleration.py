"""Opt-in speed options: ``torch.compile`` of the UNet and the channels-last memory format.

Both change speed, not results beyond float rounding, and both can be undone::

    from cradle2cane.runtime.acceleration import compile_unet, set_channels_last
    set_channels_last(model)          # convolution weights in NHWC (tensor cores like it)
    compile_unet(model)               # the first call of each new shape compiles (minutes)
    compile_unet(model, mode=None)    # back to eager

Only the UNet's ``forward`` is compiled, so forward hooks (model CPU offload, the bench's
counters) stay outside the compiled code and keep working. ``mode="reduce-overhead"`` adds CUDA
graphs; they pay only where the launch overhead of small batches dominates, which the GPU bench
script measures before anyone should rely on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes; ``reduce-overhead`` and ``max-autotune`` use CUDA graphs."""

_COMPILED = "_cradle2cane_compiled"


def compile_unet(model: Any, mode: str | None = "default", *, dynamic: bool | None = None,
                 backend: str = "inductor", fullgraph: bool = False) -> Any:
    """Compile ``model.pipe.unet.forward`` with ``torch.compile`` (``mode=None`` restores eager).

    ``dynamic=None`` lets torch decide after the first recompile (batch sizes vary within a sweep);
    ``backend="eager"`` checks the mechanics without a compiler (tests). Returns ``model``."""
    unet = model.pipe.unet
    if _COMPILED in vars(unet):  # undo first: never compile a compiled forward
        del unet.forward
        delattr(unet, _COMPILED)
    if mode is None:
        return model
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)} (or None for eager), got {mode!r}")
    options: dict[str, Any] = {"backend": backend, "dynamic": dynamic, "fullgraph": fullgraph}
    if backend == "inductor":
        options["mode"] = mode
    unet.forward = torch.compile(type(unet).forward.__get__(unet), **options)
    setattr(unet, _COMPILED, mode)
    return model


def unet_compile_mode(model: Any) -> str | None:
    """The mode ``compile_unet`` set, or None when the UNet runs eagerly."""
    return vars(model.pipe.unet).get(_COMPILED)


def set_channels_last(model: Any, enabled: bool = True) -> Any:
    """Store every component's 4-d (convolution) weights channels-last (NHWC), or back to
    contiguous. Inputs need no change: a convolution with channels-last weights returns
    channels-last activations. On GPUs tensor cores prefer it; on CPUs without native bf16/fp16
    it is what makes half-precision convolutions usable at all (docs/performance.md). Returns
    ``model``."""
    memory_format = torch.channels_last if enabled else torch.contiguous_format
    for module in model.components().values():
        module.to(memory_format=memory_format)
    return model


def is_channels_last(module: nn.Module) -> bool:
    """Whether the module's convolution weights are stored channels-last."""
    weights = [p for p in module.parameters() if p.ndim == 4]
    return bool(weights) and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
