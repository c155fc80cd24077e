"""The ArcFace iResNet backbone (InsightFace ``arcface_torch`` layout) and its hidden state.

Cradle2Cane conditions on the feature map after ``bn2`` (512 x 7 x 7 = 25088 values for the
released r100), not on the 512-d embedding. The network is built from the checkpoint's own shapes,
so r18/r34/r50/r100/r200 and the tiny test backbone share one code path.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

# Blocks per stage for the published iResNet depths.
IRESNET_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
ARCFACE_INPUT_SIZE = 112


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """iResNet with ``widths`` channels per stage and ``layers`` blocks per stage."""

    def __init__(self, layers: tuple[int, ...], widths: tuple[int, ...] = (64, 128, 256, 512),
                 num_features: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers_per_stage = tuple(layers)
        self.widths = tuple(widths)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for i, (blocks, planes) in enumerate(zip(layers, widths), start=1):
            stage = [IBasicBlock(inplanes, planes, stride=2)]
            stage += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[-1] * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    @property
    def hidden_dim(self) -> int:
        return self.widths[-1] * 7 * 7

    def hidden_state(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened ``bn2`` output for 112x112 inputs normalised to -1..1: [B, C*7*7]."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.bn2(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.dropout(self.hidden_state(x))))


def arcface_input(images: torch.Tensor, reference_inference: bool = False) -> torch.Tensor:
    """0..1 images of any size -> the network's 112x112 input in -1..1 (float32): resized as in
    training (torch bilinear, no antialias), or with ``reference_inference`` as the reference
    inference script did (8-bit, PIL's antialiased bilinear resize)."""
    if reference_inference:
        from .reference import arcface_pixels

        x = arcface_pixels(images, ARCFACE_INPUT_SIZE)
    else:
        x = F.interpolate(images.float(), size=(ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE), mode="bilinear",
                          align_corners=False, antialias=False)
    return (x - 0.5) / 0.5


def arcface_hidden_state(net: IResNet, images: torch.Tensor, reference_inference: bool = False) -> torch.Tensor:
    """Hidden state of 0..1 images of any size (see ``arcface_input``)."""
    param = next(net.parameters())
    x = arcface_input(images.to(param.device), reference_inference)
    return net.hidden_state(x.to(param.dtype))


def arcface_embedding(net: IResNet, images: torch.Tensor) -> torch.Tensor:
    """The identity feature (the network's output, 512-d for r100) of 0..1 images, preprocessed as
    in ``arcface_hidden_state``. Used by evaluation and by training's identity loss; gradients
    follow torch's grad mode."""
    return net.features(net.fc(net.dropout(arcface_hidden_state(net, images))))


def iresnet_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> IResNet:
    """Build an iResNet whose stage depths and widths match ``state_dict`` (strict load)."""
    missing = [k for k in ("conv1.weight", "fc.weight", "bn2.weight") if k not in state_dict]
    if missing:
        raise KeyError(f"not an arcface_torch iResNet state dict: missing {', '.join(missing)}")
    layers = []
    widths = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state_dict
                  if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not blocks:
            raise KeyError(f"not an arcface_torch iResNet state dict: no layer{stage}.* keys")
        layers.append(max(blocks) + 1)
        widths.append(int(state_dict[f"layer{stage}.0.conv1.weight"].shape[0]))
    num_features = int(state_dict["fc.weight"].shape[0])
    net = IResNet(tuple(layers), tuple(widths), num_features)
    net.load_state_dict(state_dict, strict=True)
    return net


def network_name(net: IResNet) -> str | None:
    """The published name (r18, r50, r100, ...) for this depth, if any."""
    for name, layers in IRESNET_LAYERS.items():
        if layers == net.layers_per_stage:
            return name
    return None
