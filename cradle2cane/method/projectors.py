"""The two projector MLPs that map identity features into the UNet's cross-attention space.

Layout ("geo" widths): four blocks Linear -> BatchNorm1d -> LeakyReLU(0.2) -> Dropout(0.3) whose
widths halve from the input but never drop below the output width, then ``fc_out``. The blocks live
in one flat ``nn.Sequential`` named ``layers``, which gives the released key names
``layers.{0,1,4,5,8,9,12,13}.*`` and ``fc_out.*``.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

NUM_BLOCKS = 4
MODULES_PER_BLOCK = 4  # Linear, BatchNorm1d, LeakyReLU, Dropout


def geo_widths(in_dim: int, out_dim: int, num_blocks: int = NUM_BLOCKS) -> list[int]:
    """Hidden widths h_k = max(out, h_{k-1} // 2), starting from the input width."""
    widths, previous = [], in_dim
    for _ in range(num_blocks):
        previous = max(out_dim, previous // 2)
        widths.append(previous)
    return widths


class ProjectorMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        blocks: list[nn.Module] = []
        previous = in_dim
        for width in geo_widths(in_dim, out_dim):
            blocks += [nn.Linear(previous, width), nn.BatchNorm1d(width), nn.LeakyReLU(0.2), nn.Dropout(0.3)]
            previous = width
        self.layers = nn.Sequential(*blocks)
        self.fc_out = nn.Linear(previous, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layers(x))


def projector_dims(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(input width, output width) read from a projector state dict."""
    return int(state_dict["layers.0.weight"].shape[1]), int(state_dict["fc_out.weight"].shape[0])


def expected_shapes(in_dim: int, out_dim: int) -> dict[str, tuple[int, ...]]:
    """Every key of a projector state dict with its shape, for error messages and checks."""
    with torch.device("meta"):
        model = ProjectorMLP(in_dim, out_dim)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def projector_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ProjectorMLP:
    """Build a projector sized by ``state_dict`` and load it (strict), without a throwaway init."""
    in_dim, out_dim = projector_dims(state_dict)
    with torch.device("meta"):
        model = ProjectorMLP(in_dim, out_dim)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()
