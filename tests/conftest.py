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


@pytest.fixture(scope="session")
def real_faces(tmp_path_factory):
    """The real SCRFD detector pack and real photos (``tests/real_faces.py``), fetched from PyPI once
    and cached; skips only when the registry cannot be reached."""
    from real_faces import fetch_archive, unpack

    return unpack(fetch_archive(), tmp_path_factory.mktemp("real_faces"))


@pytest.fixture(scope="session")
def real_models(tiny_models, real_faces, tmp_path_factory):
    """The tiny model set with the real detector pack in place of the planted one (linked, not copied)."""
    from pathlib import Path

    models = tmp_path_factory.mktemp("real_models") / "models"
    models.mkdir()
    for entry in Path(tiny_models).iterdir():
        if entry.name != "insightface":
            (models / entry.name).symlink_to(entry)
    (models / "insightface").symlink_to(real_faces.pack.parents[1])
    return models


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """One real ComfyUI with this pack for the integration and browser tests (tests/comfyui_server.py)."""
    from comfyui_server import running_server

    with running_server(tmp_path_factory.mktemp("comfyui")) as server:
        yield server
