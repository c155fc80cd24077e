"""CLIP-L image and text features for Rotate-CLIP, preprocessed in torch as training fed CLIP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F


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
    def image(self, images: torch.Tensor, reference_inference: bool = False) -> torch.Tensor:
        """Image features of 0..1 images; ``reference_inference`` feeds CLIP as the reference
        inference script did (8-bit, PIL resize, 0..255 values into the normaliser)."""
        p = self.preprocess
        if reference_inference:
            from .reference import clip_pixels

            pixels = clip_pixels(images, p.size, p.crop, p.mean, p.std).to(self.device, self.dtype)
        else:
            pixels = p(images.to(self.device)).to(self.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    @torch.no_grad()
    def text(self, texts: Sequence[str]) -> torch.Tensor:
        # Each new text is encoded alone: a batch's shape (its size, its padding) changes the kernels'
        # rounding, so a text encoded beside others would be cached with a value that depends on
        # what the process happened to encode first (differences of ~2e-6 in the final images).
        for t in dict.fromkeys(texts):
            if t not in self._text_cache:
                tokens = self.tokenizer([t], return_tensors="pt").to(self.device)
                features = _features(self.model.get_text_features(**tokens)).float()
                self._text_cache[t] = F.normalize(features, dim=-1)[0]
        result = torch.stack([self._text_cache[t] for t in texts]).to(self.device)
        if len(self._text_cache) > 512:  # ages 0..100 fit easily; anything else must not grow forever
            self._text_cache.clear()
        return result

    def clear_cache(self) -> None:
        self._text_cache.clear()
