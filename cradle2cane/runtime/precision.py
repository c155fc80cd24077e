"""Weight precision: the names users type for a dtype, and the default dtype per device.

torch is imported only when a name is turned into a dtype, so command lines and node schemas can
list the choices cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("fp32", "fp16", "bf16")
"""The precisions users can choose; ``auto`` (``None``) leaves the choice to :func:`default_dtype`."""
AUTO = "auto"
_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


def _table() -> dict[str, "torch.dtype"]:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: "str | torch.dtype | None") -> "torch.dtype | None":
    """``auto``/None -> None (the loader picks), ``fp32``/``fp16``/``bf16`` (or the torch names
    ``float16``, ``torch.float16`` ...) or a torch dtype -> that dtype."""
    table = _table()
    if name is None or not isinstance(name, str):
        if name is not None and name not in table.values():
            raise ValueError(f"dtype must be one of {', '.join(PRECISIONS)}, got {name}")
        return name
    key = name.strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key == AUTO:
        return None
    if key not in table:
        raise ValueError(f"dtype must be {AUTO} or one of {', '.join(PRECISIONS)}; got {name!r}")
    return table[key]


def default_dtype(device: "str | torch.device") -> "torch.dtype":
    """float16 on CUDA, float32 elsewhere: the one rule every loader follows."""
    import torch

    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def resolve_dtype(name: "str | torch.dtype | None", device: "str | torch.device") -> "torch.dtype":
    """The dtype a user's choice means on ``device`` (``auto`` -> :func:`default_dtype`)."""
    return parse_dtype(name) or default_dtype(device)


def dtype_name(dtype: "torch.dtype") -> str:
    for key, value in _table().items():
        if value == dtype:
            return key
    return str(dtype).removeprefix("torch.")
