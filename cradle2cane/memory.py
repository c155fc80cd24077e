"""Precision, attention and GPU-memory helpers for the ``Cradle2Cane`` facade.

Memory modes (``MEMORY_MODES``):

* ``default``: every component lives on the device (fastest; about 9 GB of fp16 weights).
* ``offload``: model CPU offload. Components stay on the CPU in four groups (text encoders, UNet,
  VAE, identity = ArcFace + face projector + CLIP-L + CLIP projector); when a module of a group runs,
  the group that is on the device goes back to the CPU first, then this group moves to the device.
  Peak VRAM is then the UNet (about 5 GB in fp16) plus activations, at the price of moving the
  weights every call.
* ``low-vram``: ``offload`` plus VAE slicing (one image at a time through the VAE) and tiling
  (only kicks in for images larger than the VAE's sample size).

The hooks move a module's inputs to the execution device, and hand the outputs of a group's top
module back on the device its first input came from, so callers (the sampler reads
``unet.device`` once per batch) see consistent devices whichever group is resident. On the CPU
every move is a no-op: the options are accepted and change nothing.
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Cradle2Cane

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MEMORY_MODES = ("default", "offload", "low-vram")


# ----------------------------------------------------------------------------- precision


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``auto``/None -> None (the loader picks), ``fp32``/``fp16``/``bf16`` or a torch dtype."""
    if name is None or isinstance(name, torch.dtype):
        if name is not None and name not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name}")
        return name
    key = str(name).strip().lower()
    aliases = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
    key = aliases.get(key, key)
    if key == "auto":
        return None
    if key not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[key]


def default_dtype(device: str | torch.device) -> torch.dtype:
    """float16 on CUDA, float32 elsewhere (the loader's rule)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    for key, value in DTYPES.items():
        if value == dtype:
            return key
    return str(dtype).removeprefix("torch.")


def _module_dtype(module: nn.Module) -> str:
    param = next(module.parameters(), None)
    return dtype_name(param.dtype) if param is not None else "none"


def components(model: "Cradle2Cane") -> dict[str, nn.Module]:
    """Every torch module of the facade by a stable name."""
    pipe = model.pipe
    return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder,
            "text_encoder_2": pipe.text_encoder_2, "clip": model.clip.model, "arcface": model.arcface,
            "face_projector": model.face_projector, "clip_projector": model.clip_projector}


def component_dtypes(model: "Cradle2Cane") -> dict[str, str]:
    """The weight dtype of each component, e.g. to check that a non-fp16-fix VAE stayed in fp32."""
    return {name: _module_dtype(module) for name, module in components(model).items()}


def parameter_counts(model: "Cradle2Cane") -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components(model).items()}


# ----------------------------------------------------------------------------- attention


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


def attention_report(model: "Cradle2Cane") -> dict[str, Any]:
    """Attention implementation per component: processor classes for the diffusers models,
    ``attn_implementation`` for the transformers ones, and whether all use SDPA."""
    report: dict[str, Any] = {}
    sdpa = True
    for name in ("unet", "vae"):
        module = getattr(model.pipe, name)
        processors = getattr(module, "attn_processors", {}) or {}
        report[name] = sorted({type(p).__name__ for p in processors.values()})
        sdpa &= all(uses_sdpa(p) for p in processors.values())
    for name, module in (("text_encoder", model.pipe.text_encoder), ("text_encoder_2", model.pipe.text_encoder_2),
                         ("clip", model.clip.model)):
        impl = getattr(module.config, "_attn_implementation", None) or "eager"
        report[name] = impl
        sdpa &= impl in ("sdpa", "flash_attention_2", "flash_attention_3")
    report["all_sdpa"] = bool(sdpa)
    return report


def ensure_sdpa(model: "Cradle2Cane") -> bool:
    """Switch diffusers attention to ``AttnProcessor2_0`` where something else was set (diffusers
    already defaults to it on torch >= 2); returns whether anything changed."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    changed = False
    for name in ("unet", "vae"):
        module = getattr(model.pipe, name)
        processors = getattr(module, "attn_processors", {}) or {}
        if processors and not all(uses_sdpa(p) for p in processors.values()):
            module.set_attn_processor(AttnProcessor2_0())
            changed = True
    return changed


# ----------------------------------------------------------------------------- moving tensors


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device) if value.device != device else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_move(v, device) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        moved = {k: _move(v, device) for k, v in value.items()}
        if type(value) is dict:
            return moved
        try:  # transformers / diffusers ModelOutput dataclasses
            return type(value)(**moved)
        except TypeError:
            for k, v in moved.items():
                value[k] = v
            return value
    return value


def _first_tensor_device(args: Iterable[Any], kwargs: Mapping[str, Any]) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
        if isinstance(value, (tuple, list)):
            found = _first_tensor_device(value, {})
            if found is not None:
                return found
    return None


def _module_device(module: nn.Module) -> torch.device | None:
    param = next(module.parameters(), None)
    return param.device if param is not None else None


# ----------------------------------------------------------------------------- model offload


class ModelOffload:
    """Keep groups of modules on ``offload_device``; move a group to ``device`` when it runs.

    Hooks sit on each group root's ``forward`` and on the ``forward`` of its direct children, so
    entry points that are not ``forward`` (``vae.encode``, ``CLIPModel.get_image_features``,
    ``IResNet.hidden_state``) also trigger the move. ``history`` records the last group loads.
    """

    def __init__(self, groups: Mapping[str, Iterable[nn.Module]], device: str | torch.device,
                 offload_device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.offload_device = torch.device(offload_device)
        self.groups = {name: list(modules) for name, modules in groups.items()}
        self.resident: str | None = None
        self.loads: Counter[str] = Counter()
        self.history: deque[str] = deque(maxlen=256)
        self._handles: list[Any] = []
        self._return_device: dict[int, torch.device | None] = {}
        for name, modules in self.groups.items():
            for module in modules:
                module.to(self.offload_device)
                self._hook(name, module, root=True)
                for child in module.children():
                    self._hook(name, child, root=False)

    def _hook(self, name: str, module: nn.Module, root: bool) -> None:
        def pre(mod, args, kwargs):
            if root:
                self._return_device[id(mod)] = _first_tensor_device(args, kwargs)
            self.load(name)
            return _move(args, self.device), _move(kwargs, self.device)

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        if root:
            def post(mod, args, output):
                back = self._return_device.pop(id(mod), None)
                return _move(output, back) if back is not None and back != self.device else output

            self._handles.append(module.register_forward_hook(post))

    def load(self, name: str) -> None:
        """Make ``name`` the group on the execution device (the previous one leaves first)."""
        if self.resident == name:
            return
        if name not in self.groups:
            raise KeyError(f"no offload group {name!r}; groups: {', '.join(self.groups)}")
        if self.resident is not None:
            self._move_group(self.resident, self.offload_device)
        self._move_group(name, self.device)
        self.resident = name
        self.loads[name] += 1
        self.history.append(name)

    def _move_group(self, name: str, device: torch.device) -> None:
        for module in self.groups[name]:
            if _module_device(module) != device:  # skip no-op moves (offload on the CPU)
                module.to(device)

    def offload_all(self) -> None:
        """Send the resident group back, leaving the execution device free of weights."""
        if self.resident is not None:
            self._move_group(self.resident, self.offload_device)
            self.resident = None

    def remove(self) -> None:
        """Take the hooks off (modules stay where they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._return_device.clear()


def offload_groups(model: "Cradle2Cane") -> dict[str, list[nn.Module]]:
    pipe = model.pipe
    return {
        "text_encoders": [pipe.text_encoder, pipe.text_encoder_2],
        "unet": [pipe.unet],
        "vae": [pipe.vae],
        "identity": [model.arcface, model.face_projector, model.clip.model, model.clip_projector],
    }


def _execution_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def set_vae_slicing_tiling(model: "Cradle2Cane", enabled: bool) -> None:
    vae = model.pipe.vae
    if enabled:
        vae.enable_slicing()
        vae.enable_tiling()
    else:
        vae.disable_slicing()
        vae.disable_tiling()


def enable_model_cpu_offload(model: "Cradle2Cane", device: str | torch.device | None = None,
                             low_vram: bool = False) -> "Cradle2Cane":
    """Install model CPU offload on ``model`` (replacing any earlier one); see the module docstring."""
    device = _execution_device(device)
    previous = getattr(model, "offload", None)
    if previous is not None:  # re-install without moving everything onto the device first
        previous.remove()
    if device.type == "cpu":
        logger.info("model CPU offload on the CPU: nothing to move, results and speed are unchanged")
    model.offload = ModelOffload(offload_groups(model), device)
    set_vae_slicing_tiling(model, low_vram)
    return model


def disable_model_cpu_offload(model: "Cradle2Cane", device: str | torch.device | None = None) -> "Cradle2Cane":
    """Remove the offload hooks and put every component on ``device`` (default: the offload's
    execution device, or leave them where they are when there was no offload)."""
    offload = getattr(model, "offload", None)
    if offload is not None:
        offload.remove()
        model.offload = None
        device = device if device is not None else offload.device
    set_vae_slicing_tiling(model, False)
    if device is not None:
        model.to(device)
    return model


def set_memory_mode(model: "Cradle2Cane", mode: str, device: str | torch.device | None = None) -> "Cradle2Cane":
    """``default`` | ``offload`` | ``low-vram`` (see the module docstring)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
    if mode == "default":
        offload = getattr(model, "offload", None)
        target = device if device is not None else (offload.device if offload is not None else None)
        return disable_model_cpu_offload(model, target)
    return enable_model_cpu_offload(model, device, low_vram=mode == "low-vram")


def release_memory(model: "Cradle2Cane | None" = None) -> None:
    """Free what can be freed without unloading: park an offloaded model's resident group on the
    CPU, drop the CLIP age-text cache, collect garbage and return cached CUDA/MPS blocks."""
    if model is not None:
        offload = getattr(model, "offload", None)
        if offload is not None:
            offload.offload_all()
        clip = getattr(model, "clip", None)
        if clip is not None and hasattr(clip, "clear_cache"):
            clip.clear_cache()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


# ----------------------------------------------------------------------------- measuring


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
