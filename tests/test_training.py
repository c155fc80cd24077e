"""training/: data preparation, losses, configuration, and real training runs on the tiny model set."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cradle2cane.training import losses as L
from cradle2cane.training.__main__ import main as training_main
from cradle2cane.training.config import ConfigError, build_config, default_values
from cradle2cane.training.data import DatasetError, FaceDataset, Sample, prepare_ffhq, prepare_folder, read_manifest

REPO = Path(__file__).resolve().parents[1]
RES = 128
LABELS = [(23, "male"), (41, "female"), (60, "male"), (8, "female")]
# Small but complete: every loss on, checkpoints every step, a validation grid at step 2.
TRAIN_SETTINGS = ["--batch-size", "2", "--mixed-precision", "no", "--set", f"resolution={RES}",
                  "--set", "dataloader_num_workers=0", "--set", "checkpointing_steps=1", "--set", "rank=4",
                  "--set", "lora_alpha=8", "--set", "d_base_channels=8", "--set", "validation_steps=2",
                  "--set", "num_validation_images=2", "--set", "validation_target_age=[10, 70]"]


def _write_faces(folder: Path, count: int = len(LABELS), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.png"
        Image.fromarray((rng.random((RES, RES, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def extras(tmp_path_factory):
    """Random stand-ins for the LPIPS and age-regressor weights (not in the shared tiny set)."""
    from cradle2cane.training.age_model import write_tiny_age_regressor
    from cradle2cane.training.lpips import write_random_lpips

    folder = tmp_path_factory.mktemp("extras")
    lpips, alexnet = write_random_lpips(folder / "lpips")
    age = write_tiny_age_regressor(folder / "age_regressor.pt2")
    return ["--set", f"lpips_model_path={lpips}", "--set", f"lpips_alexnet_path={alexnet}",
            "--set", f"age_model_path={age}"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    _write_faces(root / "images")
    rows = ["image,age,gender"] + [f"{i:05d}.png,{a},{g}" for i, (a, g) in enumerate(LABELS)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = prepare_folder(root / "images", root / "labels.csv", root / "manifest.jsonl")
    assert report.kept == len(LABELS) and not report.skipped
    return root / "manifest.jsonl"


def _train_args(tiny_models, manifest, extras, output, steps, *more):
    return ["train", "--models", str(tiny_models), "--data", str(manifest), "--output", str(output),
            "--max-steps", str(steps), *TRAIN_SETTINGS, *extras, *more]


def _log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_models, manifest, extras, tmp_path_factory):
    """`python -m cradle2cane.training train` for 2 optimiser steps, in a subprocess exactly as a user runs it."""
    output = tmp_path_factory.mktemp("run") / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cradle2cane.training",
                           *_train_args(tiny_models, manifest, extras, output, 2)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 2 steps" in proc.stdout
    return output


# ----------------------------------------------------------------------------- training runs


def test_two_steps_finite_losses_and_released_layout(trained):
    log = _log(trained)
    assert [r["step"] for r in log] == [1, 2]
    names = {"age_loss", "age_loss_2", "id_cos_loss", "pixel_mse_loss", "ms_ssim_loss", "lpips_loss", "g_loss", "loss"}
    for record in log:
        assert names <= set(record)
        assert all(math.isfinite(record[k]) for k in names)
        assert record["strength"] in (0.25, 0.5, 0.75) and abs(record["shift"]) <= 60
    assert "d_loss" in log[0] and math.isfinite(log[0]["d_loss"])  # discriminator updated on step 1 (every 6)
    for name in ("pytorch_lora_weights.safetensors", "face_project.bin", "clip_project.bin", "hparams.yml"):
        assert (trained / name).is_file()
        assert (trained / "checkpoint-1" / name).is_file()
    grid = Image.open(trained / "validation" / "step-000002.png")
    assert grid.size == (3 * RES, 2 * RES)  # 2 faces x (input + 2 target ages)


def test_trainable_parameters_changed(trained):
    from safetensors import safe_open

    with safe_open(str(trained / "pytorch_lora_weights.safetensors"), "pt") as f:
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora.up.weight")]
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert ups and all(t.abs().max() > 0 for t in ups)  # LoRA B starts at zero
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8
    for name in ("face_project.bin", "clip_project.bin"):
        first = torch.load(trained / "checkpoint-1" / name, weights_only=True)
        last = torch.load(trained / name, weights_only=True)
        assert set(first) == set(last) and "fc_out.weight" in last and "layers.1.running_mean" in last
        assert not torch.equal(first["fc_out.weight"], last["fc_out.weight"])
        assert last["layers.1.num_batches_tracked"] == 2  # BatchNorm trained on batch statistics


def test_output_loads_in_core_and_ages_a_face(trained, tiny_models, caplog):
    from cradle2cane import Cradle2Cane
    from cradle2cane.loading.settings import Settings

    with caplog.at_level(logging.WARNING):
        settings = Settings.from_file(trained / "hparams.yml")
    assert not [r for r in caplog.records if "unknown keys" in r.getMessage()]
    assert (settings.rank, settings.lora_alpha, settings.resolution) == (4, 8.0, RES)
    model = Cradle2Cane.from_pretrained(tiny_models, cradle2cane_dir=trained, device="cpu", dtype=torch.float32)
    scaling = {m.scaling["cradle2cane"] for m in model.pipe.unet.modules() if hasattr(m, "scaling")
               and "cradle2cane" in getattr(m, "scaling", {})}
    assert scaling == {2.0}  # alpha / rank survived the file
    face = torch.rand(1, 3, RES, RES, generator=torch.Generator().manual_seed(3))
    result = model(face, [70], [25], "female")
    assert result.images.shape == (1, 3, RES, RES) and torch.isfinite(result.images).all()
    assert result.strengths == [0.75]


def test_resume_continues_the_step_count_exactly(trained, tiny_models, manifest, extras, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(trained / "checkpoint-2", resumed / "checkpoint-2")
    args = _train_args(tiny_models, manifest, extras, resumed, 3, "--resume", "latest", "--set", "validation_steps=0")
    assert training_main(args) == 0
    assert [r["step"] for r in _log(resumed)] == [3]
    assert (resumed / "checkpoint-3" / "trainer_state.json").is_file()
    straight = tmp_path / "straight"
    args = _train_args(tiny_models, manifest, extras, straight, 3, "--set", "validation_steps=0",
                       "--set", "checkpointing_steps=100")
    assert training_main(args) == 0
    assert _log(straight)[-1] == _log(resumed)[-1]  # same data order, noise and optimiser state


# ----------------------------------------------------------------------------- bad input


def test_resume_from_missing_checkpoint(tiny_models, manifest, extras, tmp_path, capsys):
    args = _train_args(tiny_models, manifest, extras, tmp_path / "out", 2, "--resume", "checkpoint-7")
    assert training_main(args) == 1
    err = capsys.readouterr().err
    assert "checkpoint 'checkpoint-7' not found" in err and "checkpoints in" in err
    assert training_main(_train_args(tiny_models, manifest, extras, tmp_path / "out", 2, "--resume", "latest")) == 1
    assert "no complete checkpoint-N folder" in capsys.readouterr().err


def test_unknown_config_key_and_bad_values(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        build_config(set_args=["lerning_rate=1e-4"])
    with pytest.raises(ConfigError, match="rank must be int"):
        build_config(set_args=["rank=forty"])
    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        build_config(set_args=["mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="min_age"):
        build_config(set_args=["max_age=120"])
    config = tmp_path / "c.yml"
    config.write_text("learning_rate: 1e-5\nbogus_key: 3\n")
    assert training_main(["config", "--config", str(config)]) == 1
    assert "unknown configuration key 'bogus_key'" in capsys.readouterr().err
    config.write_text("learning_rate: 1e-5\n")
    assert training_main(["config", "--config", str(config), "--set", "validation_target_age=[5, 50]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["learning_rate"] == 1e-5 and printed["validation_target_age"] == [5, 50]
    assert training_main(["train", "--config", str(config)]) == 1
    assert "missing models_dir" in capsys.readouterr().err


def test_defaults_are_the_released_values_and_known_to_the_core():
    import dataclasses

    from cradle2cane.loading.settings import KNOWN_TRAINING_KEYS, Settings

    d = default_values()
    own = {f.name for f in dataclasses.fields(Settings)}
    assert set(d) <= own | KNOWN_TRAINING_KEYS  # hparams.yml loads without "unknown key" warnings
    assert (d["rank"], d["lora_alpha"], d["lora_target_modules"]) == (40, 40, ["to_q", "to_k", "to_v", "to_out.0"])
    assert (d["age_loss_weight"], d["age_loss_2_weight"], d["id_cos_loss_weight"], d["pixel_mse_loss_weight"],
            d["ssim_loss_weight"], d["lpips_loss_weight"], d["g_loss_weight"]) == (0.75, 1.0, 1.0, 0.05, 0.1, 1.0, 0.01)
    assert (d["age_scale"], d["same_age_rate"], d["min_age"], d["max_age"], d["d_loss_update_step"]) == (20, 0.01, 1, 80, 6)
    assert d["mixed_precision"] == "fp16" and d["learning_rate"] == 1e-4 and d["lr_scheduler"] == "constant"


def test_empty_dataset_and_bad_manifest(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="the dataset is empty"):
        read_manifest(empty)
    with pytest.raises(DatasetError, match="does not exist"):
        read_manifest(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "age": 23, "gender": "male"}\n{"image": "b.png", "age": 130, "gender": "male"}\n')
    with pytest.raises(DatasetError, match=r"line 2 \(b.png\): age 130 outside 0..100"):
        read_manifest(bad)
    bad.write_text('{"image": "a.png", "age": 23}\n')
    with pytest.raises(DatasetError, match="line 1 .*no gender"):
        read_manifest(bad)


def test_dataset_smaller_than_a_batch(tiny_models, manifest, extras, tmp_path, capsys):
    single = tmp_path / "one.jsonl"
    single.write_text(manifest.read_text().splitlines()[0].replace('"image": "', f'"image": "{manifest.parent}/') + "\n")
    args = _train_args(tiny_models, single, extras, tmp_path / "o", 1)
    assert training_main(args) == 1
    assert "the dataset has 1 images, fewer than one batch of 2" in capsys.readouterr().err


def test_unreadable_training_image_names_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read training image .*broken.png"):
        FaceDataset([Sample(broken, 30, "male")], RES)[0]


def test_prepare_folder_reports_what_it_skips(tmp_path):
    images = tmp_path / "images"
    paths = _write_faces(images, 5)
    paths[3].write_bytes(b"garbage")
    rows = ["file,age,gender", "00000.png,23,male", "00001.png,150,female", "00002.png,40,", "00003.png,30,m",
            "99999.png,30,male"]  # 00004.png has no row
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    report = prepare_folder(images, labels, tmp_path / "m.jsonl")
    assert report.kept == 1
    reasons = dict(report.skipped)
    assert "age 150 outside 0..100" in reasons["00001.png"]
    assert reasons["00002.png"].startswith("no age/gender")
    assert reasons["00003.png"].startswith("unreadable image")
    assert reasons["99999.png"].startswith("image missing")
    assert reasons["00004.png"].startswith("no label")
    assert (tmp_path / "m.skipped.csv").is_file() and "5 skipped" in report.summary()
    assert read_manifest(tmp_path / "m.jsonl") == [Sample(images / "00000.png", 23, "male")]

    labels.write_text("file,years,gender\n00000.png,23,male\n")
    with pytest.raises(DatasetError, match="has no age column"):
        prepare_folder(images, labels, tmp_path / "m2.jsonl")
    labels.write_text("file,age,gender\n00001.png,150,female\n")
    with pytest.raises(DatasetError, match="no usable labelled image .*bad label"):
        prepare_folder(images, labels, tmp_path / "m3.jsonl")


def test_prepare_ffhq_uses_single_face_labels_only(tmp_path):
    images, features = tmp_path / "ffhq", tmp_path / "json"
    _write_faces(images, 5)
    features.mkdir()
    one = {"faceAttributes": {"age": 31.0, "gender": "female"}}
    (features / "00000.json").write_text(json.dumps([one]))
    (features / "00001.json").write_text(json.dumps([one, one]))
    (features / "00002.json").write_text("[]")
    (features / "00003.json").write_text(json.dumps([{"faceAttributes": {"gender": "male"}}]))
    report = prepare_ffhq(images, features, tmp_path / "ffhq.jsonl")  # 00004 has no json
    assert report.kept == 1
    reasons = dict(report.skipped)
    assert reasons["00001.png"].startswith("not exactly one face: 2 faces")
    assert reasons["00002.png"].startswith("not exactly one face: 0 faces")
    assert reasons["00003.png"].startswith("no age/gender")
    assert reasons["00004.png"].startswith("no features json")
    sample = read_manifest(tmp_path / "ffhq.jsonl")[0]
    assert (sample.image.name, sample.age, sample.gender) == ("00000.png", 31, "female")


def test_missing_loss_weights_name_the_file(tiny_models, manifest, tmp_path, capsys):
    base = ["train", "--models", str(tiny_models), "--data", str(manifest), "--output", str(tmp_path / "o"),
            "--max-steps", "1", *TRAIN_SETTINGS]
    assert training_main(base) == 1
    err = capsys.readouterr().err
    assert "alex.pth not found in" in err and "lpips_loss_weight=0" in err
    assert training_main(base + ["--set", "lpips_loss_weight=0"]) == 1
    err = capsys.readouterr().err
    assert "age_regressor.pt2 not found in" in err and "age_loss_weight=0" in err


# ----------------------------------------------------------------------------- pieces


def test_ms_ssim_and_lpips_behave(tmp_path):
    from cradle2cane.training.lpips import load_lpips, write_random_lpips

    assert L.ms_ssim_levels(512) == 5 and L.ms_ssim_levels(128) == 4
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = (x + 0.2 * torch.rand(2, 3, 64, 64, generator=g)).clamp(0, 1).requires_grad_(True)
    assert L.ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    value = L.ms_ssim(y, x)
    assert 0 < value.item() < 1
    value.backward()
    assert torch.isfinite(y.grad).all()

    lin, alexnet = write_random_lpips(tmp_path)
    lpips = load_lpips(lin, alexnet)
    assert lpips(x, x).abs().max() < 1e-6
    z = x.clone().requires_grad_(True)
    d = lpips(x, z).sum() + lpips(x, y.detach()).sum()
    d.backward()
    assert torch.isfinite(z.grad).all() and lpips(x, y.detach()).min() > 0
    # the lpips package's own state-dict layout (trunk as net.sliceN.M) in one file
    trunk = torch.load(alexnet, weights_only=True)
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    combined = {f"net.slice{slices[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v for k, v in trunk.items()}
    combined.update(torch.load(lin, weights_only=True))
    torch.save(combined, tmp_path / "full.pth")
    assert torch.allclose(load_lpips(tmp_path / "full.pth")(x, y.detach()), lpips(x, y.detach()))


def test_gan_losses_train_only_their_side():
    disc = L.PatchDiscriminator(base_channels=8)
    fake = torch.rand(2, 3, 64, 64, requires_grad=True)
    L.generator_hinge_loss(disc, fake).backward()
    assert fake.grad is not None and all(p.grad is None for p in disc.parameters())
    loss = L.discriminator_hinge_loss(disc, torch.rand(2, 3, 64, 64), fake)
    loss.backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert disc(torch.rand(1, 3, 128, 128)).shape == (1, 1, 5, 5)


def test_age_shift_sampling_and_strength():
    from cradle2cane.training.batch import batch_plan, sample_shift

    cfg = build_config()
    rng = random.Random(0)
    shifts = [sample_shift(rng, cfg) for _ in range(3000)]
    assert min(shifts) >= -60 and max(shifts) <= 60 and min(shifts) < -50 and max(shifts) > 50
    always_same = build_config(set_args=["same_age_rate=1"])
    assert {sample_shift(rng, always_same) for _ in range(20)} == {0}
    targets, strength = batch_plan([70, 75], 20, cfg)
    assert targets == [80, 80] and strength == 0.25  # clamped: mean gap (10 + 5) / 2 = 7.5 <= t1
    targets, strength = batch_plan([20, 30], -25, cfg)
    assert targets == [1, 5] and strength == 0.5
    assert batch_plan([20, 30], 40, cfg)[1] == 0.75
