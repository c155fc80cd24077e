"""The pack's own socket types and the small frozen records that travel on them.

Handles are immutable: ComfyUI caches node outputs and hands the same object to every consumer,
so no node may change one it received.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from comfy_api.v0_0_2 import io

if TYPE_CHECKING:  # pragma: no cover
    from ..cradle2cane.faces.align import AlignedFace
    from ..cradle2cane.pipeline import Cradle2Cane, FirstPassOutput
    from .memory import ComfyGroups

C2CModel = io.Custom("C2C_MODEL")
C2CFaces = io.Custom("C2C_FACES")
C2CAging = io.Custom("C2C_AGING")
C2CIdentity = io.Custom("C2C_IDENTITY")


@dataclass(frozen=True)
class ModelHandle:
    """A loaded ``Cradle2Cane`` and its component groups in ComfyUI's memory manager (``nodes.memory``)."""

    model: Cradle2Cane
    models_dir: Path
    groups: ComfyGroups
    memory: str

    def ready(self) -> Cradle2Cane:
        """The model, with its groups loaded by ComfyUI as the ``memory`` mode says (see ``nodes.memory``)."""
        self.groups.load_all()
        return self.model

    def __repr__(self) -> str:
        return f"C2C_MODEL({self.models_dir}, {self.groups.device}, {self.model.dtype}, {self.memory})"


@dataclass(frozen=True)
class FacesHandle:
    """The faces Face Align cut out: item ``i`` of the aligned IMAGE batch is ``faces[i]``, taken
    from photo ``photo_index[i]`` of ``photo_count`` (transforms only, no pixels). ``skipped``: the
    photos without a usable face (no_face = skip), which Paste Face Back returns unchanged."""

    faces: tuple[AlignedFace, ...]
    photo_index: tuple[int, ...]
    photo_count: int
    skipped: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.faces)

    def __repr__(self) -> str:
        skipped = f", photos {list(self.skipped)} skipped" if self.skipped else ""
        return f"C2C_FACES({len(self.faces)} faces from {self.photo_count} photos{skipped})"


@dataclass(frozen=True)
class AgingHandle:
    """Pass 1's output for N = faces x target ages items (see ``FirstPassOutput``)."""

    first: FirstPassOutput

    def __len__(self) -> int:
        return len(self.first)

    def __repr__(self) -> str:
        return f"C2C_AGING({len(self.first)} items, ages {sorted(set(self.first.target_ages))})"


@dataclass(frozen=True)
class IdentityHandle:
    """Pass-2 conditioning [N, 2, D] (SVR-ArcFace token, Rotate-CLIP token) for one aging run."""

    conditioning: torch.Tensor
    first: FirstPassOutput

    def __len__(self) -> int:
        return int(self.conditioning.shape[0])

    def __repr__(self) -> str:
        return f"C2C_IDENTITY({len(self)} items)"


_PRODUCERS = {
    ModelHandle: ("C2C_MODEL", "Load Cradle2Cane"),
    FacesHandle: ("C2C_FACES", "Face Align"),
    AgingHandle: ("C2C_AGING", "AdaNI First Pass"),
    IdentityHandle: ("C2C_IDENTITY", "Identity Embed (SVR-ArcFace/Rotate-CLIP)"),
}


def expect(value: Any, kind: type, node: str, input_name: str):
    """``value`` if it is a ``kind`` handle, else a ``TypeError`` naming the socket to connect."""
    if isinstance(value, kind):
        return value
    wanted, producer = _PRODUCERS[kind]
    got = next((name for cls, (name, _) in _PRODUCERS.items() if isinstance(value, cls)), type(value).__name__)
    raise TypeError(f"{node}: input '{input_name}' needs a {wanted} handle, got {got}. "
                    f"Connect the {wanted} output of a '{producer}' node to it.")
