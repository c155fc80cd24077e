"""Shared test set-up: one torch thread, offline hubs, and one tiny model set per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # two threads on a busy 2-core machine were ~50x slower


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Path of a tiny model set in the released layout (written once per session)."""
    from cradle2cane.testing.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny") / "models", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_models):
    """A loaded ``Cradle2Cane`` on the tiny set (CPU, float32). Tests must not mutate it."""
    from cradle2cane import Cradle2Cane

    return Cradle2Cane.from_pretrained(tiny_models, device="cpu", dtype=torch.float32)


@pytest.fixture
def faces():
    """Two deterministic 128 px 'faces' (the tiny model's resolution)."""
    generator = torch.Generator().manual_seed(1234)
    return torch.rand(2, 3, 128, 128, generator=generator)
