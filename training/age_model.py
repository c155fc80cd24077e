"""The differentiable age regressor behind the two age losses (pluggable).

The reference trains with MiVOLO (``model_only_age_imdb_4.29.pth.tar``, a timm VOLO network); this
project does not bundle a network definition for it. Any regressor works that follows this
contract:

* input: RGB images, resized to ``age_model_input_size`` (bilinear) and normalised with
  ``age_model_mean``/``age_model_std`` (ImageNet by default) - done here, not in the model;
* output: ages in years, ``[B]`` or ``[B,1]``; or a tuple ``(ages, features)``; or a dict with
  ``"age"`` and ``"features"``. ``features`` (any shape ``[B,...]``) feed the age-feature cosine
  loss; without them that loss must be switched off (``age_loss_2_weight=0``).

``age_model_path`` is one of: a ``torch.export`` program (``.pt2``, saved with
``torch.export.save`` from the network in eval mode, batch dimension dynamic); a TorchScript file
(any other extension, ``torch.jit.save``); or ``package.module:factory``, a Python callable
returning an ``nn.Module`` (use it when the network's code is importable). docs/training.md shows
how to wrap and export MiVOLO.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_FILE = "age_regressor.pt2"


class AgeModelError(FileNotFoundError):
    """The age regressor is missing or does not follow the contract."""


@dataclass
class AgeOutput:
    ages: torch.Tensor  # [B] years
    features: torch.Tensor | None  # [B, F]


def _missing(path: Path) -> AgeModelError:
    return AgeModelError(
        f"age regressor {path.name} not found in {path.parent}. The age losses need a differentiable age "
        f"estimator: provide it there as a torch.export program (or set age_model_path to a .pt2 or TorchScript file or to "
        f"'package.module:factory'); see docs/training.md, section 'Age regressor'. To train without it, "
        f"set age_loss_weight=0 and age_loss_2_weight=0.")


def _load_module(spec: str | Path) -> nn.Module:
    text = str(spec)
    path = Path(text).expanduser()
    if ":" in text and not path.exists() and not (len(text) > 1 and text[1] == ":"):
        module_name, _, attr = text.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise AgeModelError(f"age_model_path {text!r}: cannot import {attr} from {module_name} ({exc})") from exc
        model = factory()
        if not isinstance(model, nn.Module):
            raise AgeModelError(f"age_model_path {text!r}: the factory returned {type(model).__name__}, not an nn.Module")
        return model
    if not path.is_file():
        raise _missing(path)
    if path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module()
        except Exception as exc:  # export raises many types for foreign or corrupt files
            raise AgeModelError(f"{path}: not a torch.export program ({type(exc).__name__}: {exc})") from exc
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # jit raises RuntimeError and friends for non-TorchScript files
        raise AgeModelError(f"{path}: not a TorchScript module ({type(exc).__name__}: {exc}). Save your regressor "
                            f"with torch.export.save (.pt2) or torch.jit.save, or use 'package.module:factory'.") from exc


class AgeRegressor(nn.Module):
    """Wraps a user network: 0..1 images in, ``AgeOutput`` (years, features) out, gradients kept."""

    def __init__(self, network: nn.Module, input_size: int = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), source: str = "age regressor") -> None:
        super().__init__()
        self.network = network
        self.input_size = int(input_size)
        self.source = source
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "AgeRegressor":
        # Exported programs refuse train()/eval(): they are frozen in the mode they were exported in.
        self.training = mode
        try:
            self.network.train(mode)
        except NotImplementedError:
            pass
        return self

    def forward(self, images: torch.Tensor) -> AgeOutput:
        x = F.interpolate(images.float(), size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False)
        x = (x - self.mean) / self.std
        param = next(iter(self.network.parameters()), None)
        if param is not None:
            x = x.to(param.dtype)
        out = self.network(x)
        features = None
        if isinstance(out, dict):
            ages, features = out.get("age"), out.get("features")
        elif isinstance(out, (tuple, list)):
            ages = out[0]
            features = out[1] if len(out) > 1 else None
        else:
            ages = out
        if not isinstance(ages, torch.Tensor):
            raise AgeModelError(f"{self.source}: returned {type(out).__name__}; expected ages [B], (ages, features) "
                                f"or {{'age', 'features'}}")
        ages = ages.float()
        if ages.ndim == 2 and ages.shape[1] == 1:
            ages = ages[:, 0]
        if ages.shape != (images.shape[0],):
            raise AgeModelError(f"{self.source}: ages have shape {tuple(ages.shape)} for {images.shape[0]} images; "
                                f"expected [B] or [B,1] in years")
        if features is not None:
            features = features.float().flatten(1)
        return AgeOutput(ages, features)


def load_age_regressor(spec: str | Path, input_size: int = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                       std: Sequence[float] = (0.229, 0.224, 0.225)) -> AgeRegressor:
    network = _load_module(spec)
    return AgeRegressor(network, input_size, mean, std, source=str(spec)).eval().requires_grad_(False)


class _TinyAgeNet(nn.Module):
    """A few random convolutions: ages and a feature vector. Stand-in for tests and demos only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(16 * 16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).flatten(1)
        return 40.0 + 30.0 * torch.tanh(self.head(features)[:, 0]), features


def write_tiny_age_regressor(path: str | Path, seed: int = 0, input_size: int = 224) -> Path:
    """Save a random age regressor as a torch.export program (contract above) - for tests and demos only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = _TinyAgeNet().eval()
        example = torch.rand(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path
