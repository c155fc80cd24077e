"""Seeds: every request names one, and the same seed gives the same images."""

from __future__ import annotations

import operator

MAX_SEED = 2**64 - 1
"""Seeds are 64-bit unsigned, the range torch generators take."""


def check_seed(seed: int, what: str = "seed") -> int:
    try:
        value = operator.index(seed)  # int and numpy integers; not floats, not bool
    except TypeError:
        value = None
    if value is None or isinstance(seed, bool) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{what} must be a whole number in 0..2**64-1 ({MAX_SEED}), got {seed!r}")
    return value
