"""What a loaded model is made of and what it costs: dtypes, parameter counts, attention
implementation, peak memory."""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch
from torch import nn

from .precision import dtype_name


class HasComponents(Protocol):
    """A loaded model that names its torch modules (``Cradle2Cane`` is one)."""

    def components(self) -> dict[str, nn.Module]: ...


def _module_dtype(module: nn.Module) -> str:
    param = next(module.parameters(), None)
    return dtype_name(param.dtype) if param is not None else "none"


def component_dtypes(model: HasComponents) -> dict[str, str]:
    """The weight dtype of each component, e.g. to check that a non-fp16-fix VAE stayed in fp32."""
    return {name: _module_dtype(module) for name, module in model.components().items()}


def parameter_counts(model: HasComponents) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in model.components().items()}


def uses_sdpa(processor: Any) -> bool:
    """Whether a diffusers attention processor computes attention with torch's
    ``scaled_dot_product_attention`` (``AttnProcessor2_0`` and its successors)."""
    cls = type(processor)
    if cls.__name__.endswith("2_0"):
        return True
    try:
        source = inspect.getsource(cls.__call__)
    except (OSError, TypeError):
        return False
    return "scaled_dot_product_attention" in source or "dispatch_attention_fn" in source


def attention_report(model: HasComponents) -> dict[str, Any]:
    """Attention implementation per component: processor classes for the diffusers models,
    ``attn_implementation`` for the transformers ones, and whether all use SDPA."""
    modules = model.components()
    report: dict[str, Any] = {}
    sdpa = True
    for name in ("unet", "vae"):
        module = modules[name]
        processors = getattr(module, "attn_processors", {}) or {}
        report[name] = sorted({type(p).__name__ for p in processors.values()})
        sdpa &= all(uses_sdpa(p) for p in processors.values())
    for name in ("text_encoder", "text_encoder_2", "clip"):
        module = modules[name]
        impl = getattr(module.config, "_attn_implementation", None) or "eager"
        report[name] = impl
        sdpa &= impl in ("sdpa", "flash_attention_2", "flash_attention_3")
    report["all_sdpa"] = bool(sdpa)
    return report


def ensure_sdpa(model: HasComponents) -> bool:
    """Switch diffusers attention to ``AttnProcessor2_0`` where something else was set (diffusers
    already defaults to it on torch >= 2); returns whether anything changed."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    changed = False
    for name in ("unet", "vae"):
        module = model.components()[name]
        processors = getattr(module, "attn_processors", {}) or {}
        if processors and not all(uses_sdpa(p) for p in processors.values()):
            module.set_attn_processor(AttnProcessor2_0())
            changed = True
    return changed


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA allocator statistics, or the process's RSS high-water mark (Linux)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """(peak MiB since ``reset_peak_memory``, what it measures)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "process_peak_rss"
    except OSError:
        pass
    return process_peak_rss_mib(), "process_peak_rss_lifetime"


def process_peak_rss_mib() -> float:
    """Peak resident set size of this process (``resource.getrusage``)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
