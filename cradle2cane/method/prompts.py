"""The words the method conditions on: the aging prompt of pass 1, the age texts of Rotate-CLIP,
and the ages and genders they may name."""

from __future__ import annotations

import re

GENDERS = ("male", "female")
MIN_AGE, MAX_AGE = 0, 100


def aging_prompt(target_age: int, gender: str) -> str:
    return f"a face image of a {target_age} years old {gender}"


def check_age(age: int, what: str) -> int:
    if isinstance(age, bool) or not isinstance(age, (int, float)) or age != int(age):
        raise ValueError(f"{what} must be a whole number of years, got {age!r}")
    if not MIN_AGE <= int(age) <= MAX_AGE:
        raise ValueError(f"{what} must be between {MIN_AGE} and {MAX_AGE}, got {age}")
    return int(age)


_RANGE = re.compile(r"^(\d+)-(\d+)(?::(\d+))?$")
AGES_EXAMPLE = "'70', '20, 40, 60' or '10-80:10'"


def parse_ages(text: str, what: str = "target ages") -> list[int]:
    """``"70"``, ``"20, 40, 60"`` or a range ``"10-80:10"`` (start-end:step, end included); the
    forms mix (``"10-30:10, 65"``). Errors start with ``what``."""
    ages: list[int] = []
    compact = re.sub(r"\s*([-:])\s*", r"\1", str(text).strip())
    for part in filter(None, re.split(r"[,;\s]+", compact)):
        match = _RANGE.match(part)
        try:
            if match:
                ages.extend(age_range(int(match[1]), int(match[2]), int(match[3] or 1), what))
            else:
                ages.append(check_age(float(part) if "." in part else int(part), what))
        except ValueError as exc:
            if str(exc).startswith(what):
                raise
            raise ValueError(f"{what} {part!r} is not an age: write whole years between {MIN_AGE} and {MAX_AGE}, "
                             f"e.g. {AGES_EXAMPLE}") from exc
    if not ages:
        raise ValueError(f"{what} is empty: give one age (e.g. '70') or several ('20, 40, 60')")
    return ages


def age_range(start: int, end: int, step: int, what: str = "ages") -> list[int]:
    """start, start+step, ... up to and including ``end``; descending when end < start."""
    for value, name in ((start, "start age"), (end, "end age")):
        check_age(value, f"{what}: {name}")
    if step < 1:
        raise ValueError(f"{what}: the age step must be at least 1, got {step}")
    direction = 1 if end >= start else -1
    return list(range(start, end + direction, step * direction))


def check_gender(gender: str, what: str = "gender") -> str:
    value = str(gender).strip().lower()
    aliases = {"m": "male", "man": "male", "f": "female", "woman": "female"}
    value = aliases.get(value, value)
    if value not in GENDERS:
        raise ValueError(f"{what} must be 'male' or 'female', got {gender!r}")
    return value


def age_text(age: int) -> str:
    return f"{age} years old"


def encode_prompts(pipe, prompts, device):
    """SDXL prompt embeddings [N,77,D] and pooled embeddings [N,P] for ``prompts`` (each distinct
    prompt encoded once), with both text encoders of ``pipe`` as diffusers encodes them (no CFG).
    Gradients follow torch's grad mode (training keeps the text encoders frozen)."""
    import torch

    unique = list(dict.fromkeys(prompts))
    embeds, _, pooled, _ = pipe.encode_prompt(unique, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    index = torch.tensor([unique.index(p) for p in prompts], device=embeds.device)
    return embeds[index], pooled[index]
