"""Training for Cradle2Cane (docs/training.md): data preparation, losses, the accelerate loop.

Installed as ``cradle2cane.training``; run it as ``cradle2cane train ...`` or ``python -m
cradle2cane.training ...``. Importing the package is cheap.
"""

__all__ = ["build_config", "train"]


def __getattr__(name: str):
    if name == "build_config":
        from .config import build_config

        return build_config
    if name == "train":
        from .trainer import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
