"""What a loaded model is made of and what it costs: dtypes, parameter counts, attention
implementation, peak memory, time.

Time: on the CPU the clock to trust is the process's CPU time (``time.process_time``), because on
a shared machine wall time mostly measures the neighbours; it sums every thread of the process, so
compare runs at the same ``torch.set_num_threads``. On CUDA it is wall time between two
``torch.cuda.synchronize`` calls: what a user waits for.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

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


# ----------------------------------------------------------------------------- time


@dataclass(frozen=True)
class Clock:
    """``now()`` in seconds on the clock that means something on ``device``."""

    device: torch.device

    @property
    def kind(self) -> str:
        return "cuda_synchronized_wall" if self.device.type == "cuda" else "process_cpu"

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()

    def time(self, fn: Callable[[], object]) -> tuple[float, object]:
        """(seconds, result) of ``fn()``."""
        start = self.now()
        result = fn()
        return self.now() - start, result


def _rows(args: tuple, kwargs: Mapping) -> int:
    first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.ndim else 0


class ModuleMeter:
    """While active, counts the calls and input rows of named modules and, with a clock, the time
    spent inside each. A name maps to a module, or to an (entry, exit) pair of modules for code
    that is not one ``forward`` (ArcFace's ``hidden_state``): counted and started when the entry
    runs, stopped when the exit returns. Give modules that never run inside one another."""

    def __init__(self, modules: Mapping[str, nn.Module | tuple[nn.Module, nn.Module]],
                 clock: Clock | None = None) -> None:
        self.modules = {name: m if isinstance(m, tuple) else (m, m) for name, m in modules.items()}
        self.clock = clock
        self.calls = {name: 0 for name in self.modules}
        self.rows = {name: 0 for name in self.modules}
        self.seconds = {name: 0.0 for name in self.modules}
        self._started: dict[str, float] = {}
        self._handles: list = []

    def __enter__(self) -> "ModuleMeter":
        for name, (entry, exit_) in self.modules.items():
            self._handles.append(entry.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            if self.clock is not None:
                self._handles.append(exit_.register_forward_hook(self._post(name), always_call=True))
        return self

    def _pre(self, name: str):
        def pre(module, args, kwargs):
            self.calls[name] += 1
            self.rows[name] += _rows(args, kwargs)
            if self.clock is not None:
                self._started[name] = self.clock.now()

        return pre

    def _post(self, name: str):
        def post(module, args, output):
            start = self._started.pop(name, None)
            if start is not None:
                self.seconds[name] += self.clock.now() - start

        return post

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._started.clear()

