"""Identity conditioning for pass 2: SVR-ArcFace and Rotate-CLIP (METHOD.md section 3)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

CLIP_MAP_METHODS = ("angle", "vector")


def svr_arcface(hidden_states: torch.Tensor, alpha: float = 0.01, beta: float = 1.1) -> torch.Tensor:
    """Singular-value reweighting of ArcFace hidden states.

    ``hidden_states`` holds rows N x C (the input image first, then its aged image(s)), or a batch
    B x N x C. The rows are decomposed as M = X^T = U S V^T, each singular value becomes
    s * exp(alpha * s) * beta, and the input's row of the rebuilt matrix is returned ([C] or
    [B, C]). Computed in float32 whatever the input dtype.
    """
    if hidden_states.ndim not in (2, 3):
        raise ValueError(f"svr_arcface: expected [N, C] or [B, N, C] hidden states, got {tuple(hidden_states.shape)}")
    x = hidden_states.float()
    m = x.transpose(-1, -2)  # C x N
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    s = s * torch.exp(alpha * s) * beta
    rebuilt = (u * s.unsqueeze(-2)) @ vh  # C x N
    return rebuilt.transpose(-1, -2)[..., 0, :]


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation along the last dimension (linear when nearly parallel)."""
    v0n, v1n = F.normalize(v0, dim=-1), F.normalize(v1, dim=-1)
    dot = (v0n * v1n).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    nearly_parallel = dot.abs() > dot_threshold
    safe_sin = torch.where(nearly_parallel, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(nearly_parallel, torch.full_like(dot, 1.0 - t), torch.sin((1.0 - t) * theta) / safe_sin)
    w1 = torch.where(nearly_parallel, torch.full_like(dot, t), torch.sin(t * theta) / safe_sin)
    return w0 * v0 + w1 * v1


def rotate_clip(image_feat: torch.Tensor, source_text_feat: torch.Tensor, target_text_feat: torch.Tensor,
                method: str = "angle") -> torch.Tensor:
    """Move a CLIP image feature from the source age towards the target age.

    ``angle`` (released default): shift = slerp(0.5, target, source) - source; ``vector``:
    shift = target - source. All features are L2-normalised first; the result is normalise(image +
    shift). When the two text features are equal the shift is zero and the (normalised) image
    feature comes back unchanged.
    """
    if method not in CLIP_MAP_METHODS:
        raise ValueError(f"rotate_clip: method must be one of {CLIP_MAP_METHODS}, got {method!r}")
    image = F.normalize(image_feat.float(), dim=-1)
    source = F.normalize(source_text_feat.float(), dim=-1)
    target = F.normalize(target_text_feat.float(), dim=-1)
    if method == "angle":
        shift = slerp(0.5, target, source) - source
    else:
        shift = target - source
    same = (source == target).all(dim=-1, keepdim=True)
    shift = torch.where(same, torch.zeros_like(shift), shift)
    return F.normalize(image + shift, dim=-1)


def age_text(age: int) -> str:
    return f"{age} years old"


@dataclass(frozen=True)
class ClipPreprocess:
    """CLIP image preprocessing done in torch on 0..1 tensors (the way training fed CLIP)."""

    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_folder(cls, folder: Path) -> "ClipPreprocess":
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        cfg = json.loads(path.read_text(encoding="utf-8"))
        size = cfg.get("size", 224)
        size = size.get("shortest_edge", size.get("height", 224)) if isinstance(size, dict) else size
        crop = cfg.get("crop_size", size)
        crop = crop.get("height", size) if isinstance(crop, dict) else crop
        return cls(int(size), int(crop), tuple(cfg.get("image_mean", cls.mean)), tuple(cfg.get("image_std", cls.std)))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in 0..1 -> normalised [B,3,crop,crop]: shortest edge resize, centre crop."""
        _, _, h, w = images.shape
        scale = self.size / min(h, w)
        new_h, new_w = max(self.crop, round(h * scale)), max(self.crop, round(w * scale))
        x = F.interpolate(images.float(), size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        top, left = (new_h - self.crop) // 2, (new_w - self.crop) // 2
        x = x[:, :, top:top + self.crop, left:left + self.crop].clamp(0.0, 1.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def _features(output) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected feature.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipFeatures:
    """CLIP-L image and text features, L2-normalised, with a small cache of age texts."""

    def __init__(self, model, tokenizer, preprocess: ClipPreprocess) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def image(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    @torch.no_grad()
    def text(self, texts: Sequence[str]) -> torch.Tensor:
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if todo:
            tokens = self.tokenizer(list(todo), padding=True, return_tensors="pt").to(self.device)
            feats = F.normalize(_features(self.model.get_text_features(**tokens)).float(), dim=-1)
            for t, f in zip(todo, feats):
                self._text_cache[t] = f
        result = torch.stack([self._text_cache[t] for t in texts]).to(self.device)
        if len(self._text_cache) > 512:  # ages 0..100 fit easily; anything else must not grow forever
            self._text_cache.clear()
        return result

    def clear_cache(self) -> None:
        self._text_cache.clear()
