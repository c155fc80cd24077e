"""Reading weight files safely (weights-only pickles, safetensors) and checking what they hold:
keys, shapes, NaN/Inf values, LoRA completeness. Every problem becomes one line naming the file."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .paths import mismatch, one_line

# The released LoRA's target layers (rank 40 on the UNet attention projections); files that carry
# no adapter metadata are checked against them.
RELEASED_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# LoRA key endings in the layouts diffusers reads (its own, PEFT's, kohya's after conversion).
_LORA_HALVES = {"down": (".lora.down.weight", ".lora_A.weight", ".lora_down.weight"),
                "up": (".lora.up.weight", ".lora_B.weight", ".lora_up.weight")}
_LORA_OPTIONAL = (".lora.up.bias", ".lora_B.bias", ".alpha")


def load_pickle_state_dict(path: Path, source: str) -> dict[str, torch.Tensor]:
    """A torch state dict from a pickle, never executing code (weights_only=True); NaN/Inf refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
        raise mismatch(path, f"cannot be read as a weights-only torch state dict ({type(exc).__name__}: "
                             f"{one_line(exc)})", source) from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise mismatch(path, "is not a state dict of tensors", source)
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    check_finite(path, state.items(), source)
    return state


def load_state_dict_file(path: Path, source: str) -> dict[str, torch.Tensor]:
    """Safetensors or weights-only pickle, by extension; NaN/Inf refused."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise mismatch(path, f"is not a readable safetensors file ({one_line(exc)})", source) from exc
        check_finite(path, state.items(), source)
        return state
    return load_pickle_state_dict(path, source)


def unreadable(path: Path) -> str | None:
    """Cheap structure check (headers only, no weights read): None for a safetensors header that
    parses and covers the file, or a torch zip archive whose directory is intact; else the problem.
    Catches truncated and overwritten downloads in milliseconds, before anything is loaded. Legacy
    (non-zip) pickles are left to the full read."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt"):
                return None
        except Exception as exc:  # safetensors raises its own error type
            return f"is not a readable safetensors file ({one_line(exc)}; an interrupted download?)"
    if path.suffix in (".bin", ".pth", ".pt", ".ckpt", ".pkl"):
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                return None
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            return f"is a damaged torch archive ({one_line(exc)}; an interrupted download?)"
    return None


def check_readable(path: Path, source: str) -> None:
    if problem := unreadable(path):
        raise mismatch(path, problem, source)


def nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[list[str], int]:
    """Names of the floating-point tensors holding NaN or +-Inf, and how many tensors were looked at.

    ``aminmax`` propagates NaN and is exact for every float dtype (a sum could overflow in fp16);
    measured at 4.4 GiB/s of CPU time on one thread, so a full model set (~9 GB) costs ~2 s of CPU.
    """
    bad, seen = [], 0
    for name, tensor in tensors:
        if not tensor.is_floating_point() or tensor.is_meta or tensor.numel() == 0:
            continue
        seen += 1
        low, high = torch.aminmax(tensor.detach())
        if not (torch.isfinite(low) and torch.isfinite(high)):
            bad.append(name)
    return bad, seen


def check_finite(path: Path, tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
    bad, seen = nonfinite(tensors)
    if bad:
        raise mismatch(path, f"{len(bad)} of {seen} weight tensors hold NaN or infinite values (e.g. {bad[0]}): "
                             f"the file is damaged or comes from a diverged training", source)


def check_module_finite(module: torch.nn.Module, path: Path, source: str) -> None:
    check_finite(path, ((n, t) for n, t in module.state_dict(keep_vars=True).items()), source)


def check_shapes(path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                 source: str, what: str) -> None:
    """Raise one error listing every missing, unexpected or wrongly shaped key."""
    problems = []
    absent = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if absent:
        problems.append(f"missing keys {absent[:6]}{' ...' if len(absent) > 6 else ''}")
    if extra:
        problems.append(f"unexpected keys {extra[:6]}{' ...' if len(extra) > 6 else ''}")
    wrong = [f"{k}: {tuple(state[k].shape)} != expected {shape}" for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != tuple(shape)]
    if wrong:
        problems.append("wrong shapes " + "; ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else ""))
    if problems:
        raise mismatch(path, f"does not match {what}: " + ", ".join(problems), source)


# ----------------------------------------------------------------------------- LoRA


def _targets_layer(name: str, targets: Any) -> bool:
    """PEFT's rule: a list of names matches a layer whose name is or ends with ``.<target>``;
    a string is a regular expression the whole name must match."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def _lora_layers(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, tuple]], list[str], dict]:
    """Group UNet LoRA keys by layer: ({layer: {"down"/"up": shape}}, unexpected keys, key spelling)."""
    prefixed = any(k.startswith("unet.") for k in state)
    layers: dict[str, dict[str, tuple]] = {}
    unexpected, spelling = [], {}
    for key, tensor in state.items():
        if prefixed and not key.startswith("unet."):
            unexpected.append(key)  # text-encoder LoRA keys: Cradle2Cane's LoRA is UNet-only
            continue
        bare = key.removeprefix("unet.")
        for half, endings in _LORA_HALVES.items():
            ending = next((e for e in endings if bare.endswith(e)), None)
            if ending is not None:
                layers.setdefault(bare[:-len(ending)], {})[half] = tuple(tensor.shape)
                spelling[half] = ("unet." if prefixed else "") + "{}" + ending
                break
        else:
            if not bare.endswith(_LORA_OPTIONAL):
                unexpected.append(key)
    return layers, unexpected, spelling


def check_lora(path: Path, state: Mapping[str, torch.Tensor], unet: torch.nn.Module, targets: Any,
               source: str) -> None:
    """Refuse, in one line with counts, a UNet LoRA that lacks tensors for layers it targets, has
    keys no UNet layer takes, has shapes that do not fit the UNet, or holds NaN/Inf.

    ``targets`` are the adapter's target modules (from the file's metadata), or None for files
    without metadata, which are checked against the released targets."""
    check_finite(path, state.items(), source)
    found, unexpected, spelling = _lora_layers(state)
    spelling = {"down": spelling.get("down", "unet.{}.lora.down.weight"),
                "up": spelling.get("up", "unet.{}.lora.up.weight")}
    layers = {n: m for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    unexpected += [spelling["down"].format(n) for n in found if n not in layers]
    wanted = [n for n in layers if _targets_layer(n, targets or RELEASED_LORA_TARGETS)]
    missing = [spelling[half].format(n) for n in wanted + [n for n in found if n in layers and n not in wanted]
               for half in ("down", "up") if half not in found.get(n, {})]
    wrong = []
    for name, shapes in found.items():
        layer = layers.get(name)
        if layer is None or len(shapes) < 2:
            continue
        fan_in, fan_out = ((layer.in_features, layer.out_features) if isinstance(layer, torch.nn.Linear)
                           else (layer.in_channels, layer.out_channels))
        down, up = shapes["down"], shapes["up"]
        if down[1] != fan_in or up[0] != fan_out or down[0] != up[1]:
            wrong.append(f"{name}: down {down} and up {up} do not fit a {fan_in} -> {fan_out} layer")
    expected = 2 * len(set(wanted) | {n for n in found if n in layers})
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {expected} LoRA tensors missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} keys that no UNet layer takes (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} layers with the wrong shape (e.g. {wrong[0]})")
    if not found and not problems:
        problems.append("no UNet LoRA weights (expected diffusers/PEFT keys unet.*.lora_A/lora_B)")
    if problems:
        raise mismatch(path, "does not fit this SDXL UNet: " + "; ".join(problems), source)
