"""Regression tests for bugs that came from a fact written twice and the copies drifting apart."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image


def test_evaluate_with_weights_keeps_the_memory_mode(tiny_models, tmp_path, monkeypatch):
    """`evaluate --weights` once loaded the model itself and dropped --memory."""
    from cradle2cane import Cradle2Cane
    from cradle2cane.tools.cli import main

    seen = []
    real = Cradle2Cane.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        seen.append((kwargs, model.offload is not None))
        return model

    monkeypatch.setattr(Cradle2Cane, "from_pretrained", classmethod(spy))
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray((np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)).save(faces / "30_male.png")
    rc = main(["evaluate", str(faces), "--models", str(tiny_models), "--weights", str(tiny_models / "Cradle2Cane"),
               "--memory", "offload", "--device", "cpu", "--target-age", "60", "--estimator", "none", "--quiet"])
    assert rc == 0
    (kwargs, offloaded), = seen
    assert kwargs["memory"] == "offload" and offloaded
    assert str(kwargs["cradle2cane_dir"]) == str(tiny_models / "Cradle2Cane")


def test_training_load_does_not_warn_about_the_arcface_depth(tiny_models, caplog):
    """Training has no hparams.yml yet, so the ArcFace file's own depth is right: no warning. (The
    warning once moved module and a logger-name filter in training silently stopped hiding it.)"""
    from cradle2cane.training.config import build_config
    from cradle2cane.training.models import load_parts

    cfg = build_config(overrides={"models_dir": str(tiny_models)})
    with caplog.at_level(logging.WARNING):
        parts = load_parts(cfg, torch.float32, torch.device("cpu"))
    assert parts.arcface.layers_per_stage != (3, 13, 30, 3)  # the tiny ArcFace is not the r100 of the defaults
    assert not [r for r in caplog.records if "hparams.yml says" in r.getMessage()]


def test_the_core_still_warns_when_hparams_names_another_arcface(tiny_models, caplog):
    from cradle2cane.loading.components import load_arcface

    with caplog.at_level(logging.WARNING):
        load_arcface(tiny_models / "backbone.pth", "r100")
    assert any("hparams.yml says r100" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_arcface(tiny_models / "backbone.pth")
    assert not caplog.records


@pytest.mark.parametrize("value", ["true", "yes", "1", True])
def test_one_scalar_coercer_for_hparams_and_training(value, tmp_path):
    """hparams.yml and the training config read booleans (and numbers) the same way."""
    from cradle2cane.loading.settings import Settings
    from cradle2cane.training.config import build_config

    assert Settings.from_mapping({"use_swr": value}).use_swr is True  # "yes"/"1" were refused by hparams.yml alone
    assert build_config(overrides={"random_flip": value}).random_flip is True
