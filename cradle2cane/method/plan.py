"""What one aging call will do, validated once before any work: the typed ``AgingPlan``.

Item layout: for B input faces and J target ages a call produces N = B * J items, item
``b * J + j`` being face ``b`` at target age ``j``. Each item draws its noise from its own
generators, seeded from the face's seed, so one face aged to 70 alone equals the 70 of a sweep.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .adani import adani_strength, check_strength
from .prompts import check_age, check_gender

if TYPE_CHECKING:  # pragma: no cover
    from ..loading.settings import Settings

MAX_SEED = 2**64 - 1


def check_seed(seed: int, what: str = "seed") -> int:
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{what} must be a whole number in 0..2**64-1, got {seed!r}")
    return value


def second_pass_seed(seed: int) -> int:
    """The seed of pass 2's generators, derived from the item's seed.

    Pass 2 must not repeat pass 1's random numbers (its VAE posterior sample, start noise and
    ancestral noise would equal pass 1's draws). A derived seed keeps the whole result fixed by one
    seed, needs no state between the passes (the second pass can run later, in another node or
    process, on an edited aged image) and does not depend on how many steps pass 1 ran.
    """
    digest = hashlib.blake2b(f"cradle2cane/pass-2/{check_seed(seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


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
              genders: str | Sequence[str], settings: "Settings", seed: int | Sequence[int] = 0,
              strength: float | None = None, id_strength: float | None = None,
              reference_inference: bool = False) -> AgingPlan:
    """Validate one request for ``count`` faces and expand it to items (see the module docstring).

    ``strength`` overrides the AdaNI pass-1 strength; ``id_strength`` defaults to the settings'.
    Raises ``ValueError`` naming the first bad value.
    """
    targets = [check_age(t, "target age") for t in (target_ages if isinstance(target_ages, (list, tuple))
                                                      else [target_ages])]
    if not targets:
        raise ValueError("give at least one target age")
    if count < 1:
        raise ValueError("faces: the batch is empty")
    sources = [check_age(a, f"source age of face {i}") for i, a in enumerate(per_face(source_ages, count, "source ages"))]
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
