"""Training for Cradle2Cane (METHOD.md section 5): data preparation, losses, the accelerate loop.

Run it as ``python -m training ...`` (see docs/training.md). Importing the package is cheap.
"""

__all__ = ["build_config", "train"]


def __getattr__(name: str):
    if name == "build_config":
        from .config import build_config

        return build_config
    if name == "train":
        from .trainer import train

        return train
    raise AttributeError(f"module 'training' has no attribute {name!r}")
