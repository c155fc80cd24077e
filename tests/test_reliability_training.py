"""Training under bad input: `prepare` never destroys a label file or an existing manifest, a new
run never replaces a previous one unless asked, manifests, output folders and checkpoints are
checked before any model is loaded, and every problem is one line naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cradle2cane.training.__main__ import main as training_main
from cradle2cane.training.config import ConfigError, build_config
from cradle2cane.training.data import DatasetError, prepare_folder, skipped_path
from cradle2cane.training.outputs import LOG_FILE, STATE_FILE, OutputError, restore
from cradle2cane.training.trainer import Trainer

LABELS = [(23, "male"), (41, "female"), (60, "male"), (8, "female")]


def _faces(folder: Path, count: int = len(LABELS)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(paths[-1])
    return paths


def _labels(path: Path, rows=LABELS) -> Path:
    path.write_text("image,age,gender\n" + "".join(f"{i:05d}.png,{a},{g}\n" for i, (a, g) in enumerate(rows)),
                    encoding="utf-8")
    return path


def _manifest(folder: Path) -> Path:
    _faces(folder / "images")
    manifest = folder / "manifest.jsonl"
    prepare_folder(folder / "images", _labels(folder / "labels.csv"), manifest)
    return manifest


def _config(tmp_path: Path, manifest: Path, output: Path, *more: str):
    # Trainer() runs every check and loads nothing, so no model folder is needed.
    return build_config(set_args=[f"models_dir={tmp_path / 'models'}", f"train_data_list={manifest}",
                                  f"output_dir={output}", "mixed_precision=no", "train_batch_size=2", *more])


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------- prepare


def test_prepare_refuses_to_write_over_its_label_file(tmp_path, capsys):
    _faces(tmp_path / "images")
    labels = _labels(tmp_path / "L.csv")
    before = labels.read_bytes()
    code = training_main(["prepare", "folder", "--images", str(tmp_path / "images"), "--labels", str(labels),
                          "--out", str(labels)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and ".jsonl" in err
    assert labels.read_bytes() == before


def test_prepare_refuses_a_skip_list_that_is_the_label_file_under_another_spelling(tmp_path):
    """`--out data.jsonl` writes its skip list to data.skipped.csv: that must not be the labels either."""
    _faces(tmp_path / "images")
    labels = _labels(tmp_path / "data.skipped.csv")
    before = labels.read_bytes()
    (tmp_path / "sub").mkdir()
    spelled = tmp_path / "sub" / ".." / "data.jsonl"
    with pytest.raises(FileExistsError, match="skip list .* is the input file"):
        prepare_folder(tmp_path / "images", labels, spelled, overwrite=True)
    assert labels.read_bytes() == before and not (tmp_path / "data.jsonl").exists()


def test_prepare_refuses_an_existing_manifest_unless_overwrite(tmp_path, capsys):
    _faces(tmp_path / "images")
    labels = _labels(tmp_path / "labels.csv")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("precious\n")
    args = ["prepare", "folder", "--images", str(tmp_path / "images"), "--labels", str(labels), "--out", str(manifest)]
    assert training_main(args) == 1
    assert "already exists" in capsys.readouterr().err and manifest.read_text() == "precious\n"
    assert training_main([*args, "--overwrite"]) == 0
    assert len(manifest.read_text().splitlines()) == len(LABELS)


def test_prepare_refuses_an_existing_skip_list_unless_overwrite(tmp_path):
    _faces(tmp_path / "images")
    labels = _labels(tmp_path / "labels.csv")
    manifest = tmp_path / "m.jsonl"
    skipped_path(manifest).write_text("someone's notes\n")
    with pytest.raises(FileExistsError, match="m.skipped.csv already exists"):
        prepare_folder(tmp_path / "images", labels, manifest)
    assert not manifest.exists()


def test_prepare_leaves_no_temporary_file_and_respects_the_umask(tmp_path):
    _faces(tmp_path / "images")
    labels = _labels(tmp_path / "labels.csv", LABELS[:3])  # image 3 unlabelled: a skip list too
    previous = os.umask(0o027)
    try:
        report = prepare_folder(tmp_path / "images", labels, tmp_path / "m.jsonl")
    finally:
        os.umask(previous)
    assert report.kept == 3 and len(report.skipped) == 1
    assert _listing(tmp_path) == {"images", *(f"images/{i:05d}.png" for i in range(4)), "labels.csv", "m.jsonl",
                                  "m.skipped.csv"}  # no temporary file left
    for name in ("m.jsonl", "m.skipped.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640
    unusable = _write(tmp_path / "bad.csv", "image,age,gender\nnope.png,30,male\n")
    before = _listing(tmp_path)
    with pytest.raises(DatasetError, match="no usable labelled image"):  # a failed prepare writes nothing
        prepare_folder(tmp_path / "images", unusable, tmp_path / "other.jsonl")
    assert _listing(tmp_path) == before


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the output folder


def test_a_new_run_does_not_replace_a_previous_one(tmp_path, capsys):
    manifest = _manifest(tmp_path / "data")
    output = tmp_path / "out"
    (output / "checkpoint-4").mkdir(parents=True)
    (output / LOG_FILE).write_text('{"step": 4}\n')
    with pytest.raises(OutputError, match="already holds a training run .*--resume latest.*--overwrite"):
        Trainer(_config(tmp_path, manifest, output))
    assert (output / "checkpoint-4").is_dir() and (output / LOG_FILE).read_text() == '{"step": 4}\n'


def test_overwrite_deletes_only_the_previous_runs_outputs(tmp_path):
    manifest = _manifest(tmp_path / "data")
    output = tmp_path / "out"
    (output / "checkpoint-4").mkdir(parents=True)
    (output / LOG_FILE).write_text('{"step": 4}\n')
    (output / "notes.txt").write_text("mine")
    Trainer(_config(tmp_path, manifest, output, "overwrite_output_dir=true"))
    assert _listing(output) == {"notes.txt"}


def test_overwrite_keeps_the_previous_run_when_a_check_fails(tmp_path):
    manifest = _manifest(tmp_path / "data")
    next((tmp_path / "data" / "images").glob("*.png")).write_bytes(b"broken")
    output = tmp_path / "out"
    (output / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(DatasetError, match="1 of 4 images cannot be used"):
        Trainer(_config(tmp_path, manifest, output, "overwrite_output_dir=true"))
    assert (output / "checkpoint-4").is_dir()
    with pytest.raises(DatasetError):  # and a refused run creates no output folder
        Trainer(_config(tmp_path, manifest, tmp_path / "new" / "out"))
    assert not (tmp_path / "new").exists()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    manifest = _manifest(tmp_path / "data")
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        Trainer(_config(tmp_path, manifest, tmp_path / "out"))


# ----------------------------------------------------------------------------- the manifest's images


def test_missing_and_broken_images_are_found_before_training(tmp_path, capsys):
    manifest = _manifest(tmp_path / "data")
    images = sorted((tmp_path / "data" / "images").glob("*.png"))
    images[1].unlink()
    images[2].write_bytes(images[2].read_bytes()[:200])  # truncated: the header still parses
    with pytest.raises(DatasetError) as exc:
        Trainer(_config(tmp_path, manifest, tmp_path / "out"))
    message = str(exc.value)
    assert "\n" not in message and str(manifest) in message and "2 of 4 images cannot be used" in message
    assert images[1].name in message and images[2].name in message
    assert "checking training images" in capsys.readouterr().err  # the progress bar
    Trainer(_config(tmp_path, manifest, tmp_path / "out", "check_images=false"))  # the check can be skipped


def test_an_image_in_a_format_we_do_not_read_is_refused_even_named_png(tmp_path):
    """Training reads images through the one image reader: only the listed formats are opened."""
    manifest = _manifest(tmp_path / "data")
    disguised = sorted((tmp_path / "data" / "images").glob("*.png"))[3]
    Image.open(disguised).save(disguised, format="ICO")  # Pillow reads ICO; the pack does not
    with pytest.raises(DatasetError) as exc:
        Trainer(_config(tmp_path, manifest, tmp_path / "out"))
    assert "1 of 4 images cannot be used" in str(exc.value) and disguised.name in str(exc.value)
    assert "PNG, JPEG, WebP, BMP, TIFF or GIF" in str(exc.value)


# ----------------------------------------------------------------------------- resuming


def _checkpoint(output: Path, step: int = 2) -> Path:
    """A checkpoint folder with the files a real one has (contents only as deep as the checks read)."""
    folder = output / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps({"global_step": step, "epoch": 0, "micro_step": step}))
    for name in ("face_project.bin", "clip_project.bin", "optimizer.bin", "scheduler.bin"):
        torch.save({"weight": torch.zeros(2)}, folder / name)
    from safetensors.torch import save_file

    save_file({"unet.a.lora.down.weight": torch.zeros(1, 1)}, str(folder / "pytorch_lora_weights.safetensors"))
    return folder


@pytest.mark.parametrize("state, words", [
    ("{not json", "not readable JSON"),
    ('{"epoch": 3}', "expected {\"global_step\""),
    ('{"global_step": "two"}', "expected {\"global_step\""),
    ("[2]", "expected {\"global_step\""),
])
def test_bad_trainer_state_is_named(tmp_path, state, words):
    manifest = _manifest(tmp_path / "data")
    checkpoint = _checkpoint(tmp_path / "out")
    (checkpoint / STATE_FILE).write_text(state)
    with pytest.raises(OutputError) as exc:
        Trainer(_config(tmp_path, manifest, tmp_path / "out", "resume_from_checkpoint=latest"))
    assert str(checkpoint / STATE_FILE) in str(exc.value) and words in str(exc.value)


@pytest.mark.parametrize("name", ["optimizer.bin", "pytorch_lora_weights.safetensors"])
def test_truncated_checkpoint_file_is_named_before_loading(tmp_path, name):
    manifest = _manifest(tmp_path / "data")
    checkpoint = _checkpoint(tmp_path / "out")
    damaged = checkpoint / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(OutputError) as exc:
        Trainer(_config(tmp_path, manifest, tmp_path / "out", "resume_from_checkpoint=latest"))
    assert str(damaged) in str(exc.value) and "interrupted download" in str(exc.value)


def test_incomplete_checkpoint_is_named(tmp_path):
    manifest = _manifest(tmp_path / "data")
    checkpoint = _checkpoint(tmp_path / "out")
    (checkpoint / "clip_project.bin").unlink()
    with pytest.raises(OutputError, match="incomplete: clip_project.bin is missing"):
        Trainer(_config(tmp_path, manifest, tmp_path / "out", "resume_from_checkpoint=latest"))


def test_optimizer_state_that_does_not_fit_is_one_line_naming_the_checkpoint(tmp_path):
    """A well-formed optimizer.bin of another run: accelerate's own error becomes one line."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        accelerator = Accelerator(cpu=True)
        model = torch.nn.Linear(3, 3)
        optimizer = torch.optim.AdamW(model.parameters())
        model, optimizer = accelerator.prepare(model, optimizer)
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        accelerator.save_state(str(tmp_path / "ck"))
        torch.save({"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"params": [0, 1, 2, 3]}]},
                   tmp_path / "ck" / "optimizer.bin")
        with pytest.raises(OutputError) as exc:
            restore(accelerator, tmp_path / "ck")
    finally:
        AcceleratorState._reset_state(True)
    assert "\n" not in str(exc.value) and str(tmp_path / "ck") in str(exc.value)


# ----------------------------------------------------------------------------- the method's settings


def test_training_settings_out_of_range_name_the_key_and_where_it_came_from(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^--set: swr_alpha must be .*got inf$"):
        build_config(set_args=["swr_alpha=.inf"])
    config = _write(tmp_path / "run.yml", "infer_step: 100000\n")
    assert training_main(["config", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err and "infer_step must be at least 1 and at most 50" in err
    with pytest.raises(ConfigError, match="resolution must be"):
        build_config(overrides={"resolution": 1000000})
