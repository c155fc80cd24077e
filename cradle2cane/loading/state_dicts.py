"""Reading weight files safely (weights-only pickles, safetensors) and checking their keys and shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .paths import mismatch


def load_pickle_state_dict(path: Path, source: str) -> dict[str, torch.Tensor]:
    """A torch state dict from a pickle, never executing code (weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
        raise mismatch(path, f"cannot be read as a weights-only torch state dict ({type(exc).__name__}: {exc})",
                       source) from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise mismatch(path, "is not a state dict of tensors", source)
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_state_dict_file(path: Path, source: str) -> dict[str, torch.Tensor]:
    """Safetensors or weights-only pickle, by extension."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise mismatch(path, f"is not a readable safetensors file ({exc})", source) from exc
    return load_pickle_state_dict(path, source)


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
