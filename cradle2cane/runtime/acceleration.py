"""Opt-in speed options: ``torch.compile`` of the UNet, the channels-last memory format, and
malloc settings for processes that run on the CPU.

The first two change speed, not results beyond float rounding, and both can be undone::

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

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is imported where it runs: the command line's --help names COMPILE_MODES
    import torch
    from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes; ``reduce-overhead`` and ``max-autotune`` use CUDA graphs."""

_COMPILED = "_cradle2cane_compiled"


def compile_unet(model: Any, mode: str | None = "default", *, dynamic: bool | None = True,
                 backend: str | Callable = "inductor", fullgraph: bool = False) -> Any:
    """Compile ``model.pipe.unet.forward`` with ``torch.compile`` (``mode=None`` restores eager).

    ``dynamic=True`` (default) compiles one graph for every batch size a sweep uses; the input is
    handed over in the memory format of the UNet's weights, so callers' strides never force a
    recompile (batch size 1 still gets its own graph, and so does pass 2's folded LoRA: expect
    two or three compilations in the first sweep). ``backend="eager"`` checks the mechanics
    without a compiler. Returns ``model``."""
    unet = model.pipe.unet
    if _COMPILED in vars(unet):  # undo first: never compile a compiled forward
        del unet.forward
        delattr(unet, _COMPILED)
    if mode is None:
        return model
    import torch

    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)} (or None for eager), got {mode!r}")
    options: dict[str, Any] = {"backend": backend, "dynamic": dynamic, "fullgraph": fullgraph}
    if backend == "inductor":
        options["mode"] = mode
    compiled = torch.compile(type(unet).forward.__get__(unet), **options)

    def forward(sample: torch.Tensor, *args, **kwargs):
        weight = unet.conv_in.weight
        layout = torch.channels_last if _is_nhwc(weight) else torch.contiguous_format
        return compiled(sample.contiguous(memory_format=layout), *args, **kwargs)

    unet.forward = forward
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
    import torch

    memory_format = torch.channels_last if enabled else torch.contiguous_format
    for module in model.components().values():
        module.to(memory_format=memory_format)
    return model


def _is_nhwc(weight: torch.Tensor) -> bool:
    import torch

    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def is_channels_last(module: nn.Module) -> bool:
    """Whether the module's convolution weights are stored channels-last."""
    weights = [p for p in module.parameters() if p.ndim == 4 and p.shape[-2:] != (1, 1)]
    return bool(weights) and all(_is_nhwc(w) for w in weights)


# glibc's mallopt parameters and the largest mmap threshold it accepts on 64-bit systems
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system.

    By default every tensor above a few MiB (a VAE activation at 512 px) is a fresh ``mmap``, whose
    pages the kernel faults in and zeroes on first touch, and freed heap memory is trimmed away:
    a CPU run then spends a tenth of its CPU time in the kernel (measured, docs/performance.md).
    With this, blocks up to 32 MiB come from malloc's heap and stay there; the process's resident
    memory stays near its peak. Meant for processes this package owns (the command line), not for
    a host application such as ComfyUI. Returns whether it applied (Linux with glibc only)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
