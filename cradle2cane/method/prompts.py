"""The words the method conditions on: the aging prompt of pass 1, the age texts of Rotate-CLIP,
and the ages and genders they may name."""

from __future__ import annotations

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
