"""LPIPS with the AlexNet trunk (Zhang et al. 2018, v0.1), in plain torch.

Two weight files, neither of which this project can download for you:

* the AlexNet ImageNet trunk, torchvision's ``alexnet-owt-7be5be79.pth``
  (https://download.pytorch.org/models/alexnet-owt-7be5be79.pth; keys ``features.N.weight|bias``);
* the LPIPS linear layers ``alex.pth`` (v0.1) from the ``lpips`` package
  (``lpips/weights/v0.1/alex.pth`` inside ``pip download lpips``; keys ``linK.model.1.weight``).

A full ``lpips.LPIPS(net="alex").state_dict()`` (keys ``net.sliceN.M.*`` and ``linK.model.1.*``)
also works as a single file. The layer layout below matches those key names, so the files load
without any conversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_FILE = "alex.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_SOURCE = "the lpips package (pip download lpips --no-deps; the file is lpips/weights/v0.1/alex.pth)"
CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)  # indices in ``features`` after which LPIPS reads relu1..relu5
FEATURE_KEYS = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
                10: (256, 256, 3, 3)}
# The slice each torchvision ``features`` index sits in inside a saved lpips.LPIPS state dict.
_LPIPS_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


class LpipsWeightsError(FileNotFoundError):
    """An LPIPS weight file is missing or has the wrong content."""


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )


class _Lin(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))  # index 1 = lpips' key


class LPIPS(nn.Module):
    """Perceptual distance between two batches of 0..1 images: [B] (lower = more alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _alexnet_features()
        for i, channels in enumerate(CHANNELS):
            setattr(self, f"lin{i}", _Lin(channels))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
            if i == TAPS[-1]:
                break
        return out

    @staticmethod
    def _unit(x: torch.Tensor) -> torch.Tensor:
        # Unit length across channels; the small constant inside the root keeps the gradient finite
        # where every channel is zero (a plain sqrt has an infinite derivative there).
        return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True) + 1e-12) + 1e-10)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = ((a.float() * 2 - 1) - self.shift) / self.scale
        b = ((b.float() * 2 - 1) - self.shift) / self.scale
        total = 0.0
        for i, (fa, fb) in enumerate(zip(self._taps(a), self._taps(b))):
            diff = (self._unit(fa) - self._unit(fb)) ** 2
            total = total + getattr(self, f"lin{i}").model(diff).mean(dim=(2, 3))
        return total.flatten()


def _read(path: Path, what: str, source: str) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise LpipsWeightsError(f"{path.name} not found in {path.parent} ({what}). Get it from {source} and put it "
                                f"there, or point the config at it; or set lpips_loss_weight=0 to train without LPIPS.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or unsafe pickles raise many types
        raise LpipsWeightsError(f"{path}: cannot be read as a weights-only torch state dict ({exc})") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise LpipsWeightsError(f"{path}: is not a state dict")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _trunk_from(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for index in FEATURE_KEYS:
        for part in ("weight", "bias"):
            for key in (f"features.{index}.{part}", f"net.slice{_LPIPS_SLICES[index]}.{index}.{part}"):
                if key in state:
                    out[f"features.{index}.{part}"] = state[key]
    return out


def load_lpips(lpips_path: str | Path, alexnet_path: str | Path | None = None) -> LPIPS:
    """Frozen LPIPS-alex in eval mode; ``alexnet_path`` may be None when ``lpips_path`` holds both parts."""
    lpips_path = Path(lpips_path).expanduser()
    lin_state = _read(lpips_path, "LPIPS v0.1 linear layers", LPIPS_SOURCE)
    trunk = _trunk_from(lin_state)
    if len(trunk) < 2 * len(FEATURE_KEYS):
        if alexnet_path is None:
            raise LpipsWeightsError(f"{lpips_path} holds no AlexNet trunk; also give the AlexNet file "
                                    f"({ALEXNET_FILE} from {ALEXNET_URL})")
        alexnet_path = Path(alexnet_path).expanduser()
        trunk = _trunk_from(_read(alexnet_path, "AlexNet ImageNet weights", ALEXNET_URL))
        if len(trunk) < 2 * len(FEATURE_KEYS):
            raise LpipsWeightsError(f"{alexnet_path}: not torchvision AlexNet weights (expected keys "
                                    f"features.0.weight ... features.10.bias); get {ALEXNET_URL}")
    model = LPIPS()
    state = dict(trunk)
    for i in range(len(CHANNELS)):
        key = f"lin{i}.model.1.weight"
        if key not in lin_state:
            raise LpipsWeightsError(f"{lpips_path}: no {key}; expected the LPIPS v0.1 alex.pth from {LPIPS_SOURCE}")
        state[key] = lin_state[key]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k}: {tuple(state[k].shape)} != {shape}" for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        raise LpipsWeightsError(f"LPIPS weights do not match AlexNet-LPIPS: {'; '.join(wrong[:4])}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


def write_random_lpips(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """A random stand-in for both files (same names, keys and shapes) - for tests only."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    trunk = {}
    for index, shape in FEATURE_KEYS.items():
        fan_in = shape[1] * shape[2] * shape[3]
        trunk[f"features.{index}.weight"] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
        trunk[f"features.{index}.bias"] = torch.randn(shape[0], generator=generator) * 0.01
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) * 0.1
            for i, c in enumerate(CHANNELS)}
    torch.save(trunk, folder / ALEXNET_FILE)
    torch.save(lins, folder / LPIPS_FILE)
    return folder / LPIPS_FILE, folder / ALEXNET_FILE
