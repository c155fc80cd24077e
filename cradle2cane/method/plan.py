"""What one aging call will do, validated once before any work: the typed ``AgingPlan``.

Item layout: for B input faces and J target ages a call produces N = B * J items, item
``b * J + j`` being face ``b`` at target age ``j``. Each item draws its noise from its own
generators, seeded from the face's seed, so one face aged to 70 alone equals the 70 of a sweep.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .adani import adani_strength, check_strength
from .prompts import check_age, check_gender
from .seeds import check_seed

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


def second_pass_seed(seed: int) -> int:
    """The seed of pass 2's generators, derived from the item's seed.

    Pass 2 must not repeat pass 1's random numbers (its VAE posterior sample, start noise and
    ancestral noise would equal pass 1's draws). A derived seed keeps the whole result fixed by one
    seed, needs no state between the passes (the second pass can run later, in another node or
    process, on an edited aged image) and does not depend on how many steps pass 1 ran.
    """
    digest = hashlib.blake2b(f"cradle2cane/pass-2/{check_seed(seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    return batch_size


def check_faces(images: "torch.Tensor", size: int) -> "torch.Tensor":
    """A [B,3,H,W] 0..1 batch, checked, as contiguous float32 at ``size`` x ``size``: non-square faces are
    centre-cropped and other sizes resized, with a warning (the model expects FFHQ-aligned faces
    at its training resolution)."""
    import torch
    import torch.nn.functional as F

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"faces must be a [B,3,H,W] tensor of RGB images in 0..1, got {shape}")
    if images.shape[0] == 0:
        raise ValueError("faces: the batch is empty")
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError("faces contain NaN or infinite values")
    if images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError(f"faces must be in 0..1, got values in {images.min():.3g}..{images.max():.3g}")
    _, _, h, w = images.shape
    if h != w:
        side = min(h, w)
        logger.warning("faces are %dx%d, not square: centre-cropping to %dx%d", w, h, side, side)
        top, left = (h - side) // 2, (w - side) // 2
        images = images[:, :, top:top + side, left:left + side]
    if images.shape[-1] != size:
        logger.warning("faces are %dpx, the model works at %dpx: resizing", images.shape[-1], size)
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images.clamp(0, 1).contiguous()  # one memory layout: results do not depend on the caller's


def per_face(value, count: int, what: str) -> list:
    """``value`` for each of ``count`` faces: one value for all, or a list of exactly ``count``."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{what}: got {len(value)} values for {count} faces; give one, or one per face")
        return list(value)
    return [value] * count


@dataclass(frozen=True)
class AgingPlan:
    """Every item of a call with what it uses; built by :func:`make_plan` (validated)."""

    source_index: list[int]
    source_ages: list[int]
    target_ages: list[int]
    genders: list[str]
    strengths: list[float]
    seeds: list[int]
    id_strength: float
    reference_inference: bool = False

    def __len__(self) -> int:
        return len(self.source_index)

    @property
    def faces(self) -> int:
        return max(self.source_index) + 1


def make_plan(count: int, target_ages: int | Sequence[int], source_ages: int | Sequence[int],
              genders: str | Sequence[str], settings, seed: int | Sequence[int] = 0,
              strength: float | None = None, id_strength: float | None = None,
              reference_inference: bool = False) -> AgingPlan:
    """Validate one request for ``count`` faces and expand it to items (see the module docstring).

    ``settings`` (``loading.settings.Settings``) gives t1, t2, one_threshold, infer_step and the
    default id_strength; ``strength`` overrides the AdaNI pass-1 strength.
    Raises ``ValueError`` naming the first bad value.
    """
    targets = [check_age(t, "target age") for t in (target_ages if isinstance(target_ages, (list, tuple))
                                                      else [target_ages])]
    if not targets:
        raise ValueError("give at least one target age")
    if count < 1:
        raise ValueError("faces: the batch is empty")
    sources = [check_age(a, f"source age of face {i}")
               for i, a in enumerate(per_face(source_ages, count, "source ages"))]
    gender = [check_gender(g, f"gender of face {i}") for i, g in enumerate(per_face(genders, count, "genders"))]
    seeds = [check_seed(s, f"seed of face {i}") for i, s in enumerate(per_face(seed, count, "seeds"))]
    steps = settings.infer_step
    if strength is not None:
        strength = check_strength(strength, steps, "strength override")
    id_strength = check_strength(settings.id_strength if id_strength is None else id_strength, steps, "id_strength")
    if not isinstance(reference_inference, bool):
        raise ValueError(f"reference_inference must be True or False, got {reference_inference!r}")
    items = [(b, t) for b in range(count) for t in targets]
    return AgingPlan(
        source_index=[b for b, _ in items], source_ages=[sources[b] for b, _ in items],
        target_ages=[t for _, t in items], genders=[gender[b] for b, _ in items],
        strengths=[strength if strength is not None else
                   adani_strength(abs(t - sources[b]), settings.t1, settings.t2, settings.one_threshold)
                   for b, t in items],
        seeds=[seeds[b] for b, _ in items], id_strength=id_strength, reference_inference=reference_inference)
