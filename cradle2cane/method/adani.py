"""AdaNI: the pass-1 noise strength from the age gap, and how many UNet steps a strength runs."""

from __future__ import annotations

import math


def adani_strength(age_gap: float, t1: float = 10, t2: float = 30, one_threshold: bool = False) -> float:
    """AdaNI noise strength for an age gap: small gaps keep more of the input."""
    gap = abs(age_gap)
    if gap <= t1:
        return 0.25
    if one_threshold or gap <= t2:
        return 0.5
    return 0.75


def unet_evaluations(strength: float, steps: int) -> int:
    """How many UNet calls img2img makes for a strength (diffusers' rule: int(steps * strength))."""
    return min(int(steps * strength), steps)


def check_strength(strength: float, steps: int, what: str = "strength") -> float:
    if not isinstance(strength, (int, float)) or math.isnan(strength) or not 0.0 < strength <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {strength!r}")
    if unet_evaluations(strength, steps) < 1:
        raise ValueError(f"{what}={strength} runs no denoising step with {steps} steps; use at least {1 / steps:g}")
    return float(strength)
