"""Precision, attention and GPU-memory helpers for the ``Cradle2Cane`` facade.

Memory modes (``cradle2cane.runtime.MEMORY_MODES``):

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
import logging
from collections import Counter, deque
from typing import Any, Iterable, Mapping, Protocol

import torch
from torch import nn

from . import MEMORY_MODES

logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- attention


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


class Offloadable(Protocol):
    """What the helpers below need from a loaded model (``Cradle2Cane`` is one)."""

    offload: ModelOffload | None

    def components(self) -> dict[str, nn.Module]: ...

    def component_groups(self) -> dict[str, list[nn.Module]]: ...

    def to(self, device: str | torch.device) -> Any: ...


def _execution_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def set_vae_slicing_tiling(model: Offloadable, enabled: bool) -> None:
    vae = model.components()["vae"]
    if enabled:
        vae.enable_slicing()
        vae.enable_tiling()
    else:
        vae.disable_slicing()
        vae.disable_tiling()


def enable_model_cpu_offload(model: Offloadable, device: str | torch.device | None = None,
                             low_vram: bool = False) -> Offloadable:
    """Install model CPU offload on ``model`` (replacing any earlier one); see the module docstring."""
    device = _execution_device(device)
    previous = getattr(model, "offload", None)
    if previous is not None:  # re-install without moving everything onto the device first
        previous.remove()
    if device.type == "cpu":
        logger.info("model CPU offload on the CPU: nothing to move, results and speed are unchanged")
    model.offload = ModelOffload(model.component_groups(), device)
    set_vae_slicing_tiling(model, low_vram)
    return model


def disable_model_cpu_offload(model: Offloadable, device: str | torch.device | None = None) -> Offloadable:
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


def set_memory_mode(model: Offloadable, mode: str, device: str | torch.device | None = None) -> Offloadable:
    """``default`` | ``offload`` | ``low-vram`` (see the module docstring)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
    if mode == "default":
        offload = getattr(model, "offload", None)
        target = device if device is not None else (offload.device if offload is not None else None)
        return disable_model_cpu_offload(model, target)
    return enable_model_cpu_offload(model, device, low_vram=mode == "low-vram")


def release_memory(model: Offloadable | None = None) -> None:
    """Free what can be freed without unloading: park an offloaded model's resident group on the
    CPU, collect garbage and return cached CUDA/MPS blocks."""
    offload = getattr(model, "offload", None)
    if offload is not None:
        offload.offload_all()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


# ----------------------------------------------------------------------------- measuring


