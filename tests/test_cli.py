"""The `cradle2cane` command line: option forms, output paths, the order in which bad input
fails (before any model loads), sweep strips and animations, signals, odd paths and quiet output."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cradle2cane
from cradle2cane.tools import cli
from cradle2cane.tools.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A photo with one face the tiny set's stand-in detector finds (a skin-coloured ellipse)."""
    from cradle2cane.testing.planted_faces import paint_face

    image = np.full((200, 260, 3), (40, 60, 90), np.uint8)
    paint_face(image, (130, 100), 90, (225, 180, 150))
    path = tmp_path_factory.mktemp("photo") / "person.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="module")
def faceless(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faceless") / "wall.png"
    Image.fromarray(np.zeros((120, 160, 3), np.uint8)).save(path)
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the diffusion model is loaded: everything checked here must fail first."""
    from cradle2cane.pipeline import Cradle2Cane

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(Cradle2Cane, "from_pretrained", classmethod(refuse))


# ----------------------------------------------------------------------------- option forms


@pytest.mark.parametrize("values, ages", [(["10,40"], [10, 40]), (["10-30:10"], [10, 20, 30]),
                                          (["70", "20, 40"], [70, 20, 40]), (["10-20:10", "20"], [10, 20])])
def test_target_age_takes_one_age_a_list_or_a_range(tiny_models, photo, tmp_path, values, ages):
    out = tmp_path / "ages"
    argv = ["age", photo, "--models", tiny_models, "--out", f"{out}/", "--quiet"]
    for value in values:
        argv += ["--target-age", value]
    assert _run(*argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"person_{a}.png" for a in ages)


def test_global_options_work_on_either_side_of_the_command(tiny_models, faceless, tmp_path, capsys):
    argv = ["age", faceless, "--models", tiny_models, "--target-age", "70", "--out", tmp_path / "o.png"]
    for where in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ValueError, match="no face"):  # --debug: the exception itself
            _run(*where)
    assert _run("--quiet", *argv) == 1 and _run(*argv, "--quiet") == 1
    assert "no face" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"cradle2cane {cradle2cane.__version__}"


def test_help_shows_every_default_and_explains_the_options():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        if name == "train":
            continue
        for action in sub._actions:
            if action.option_strings and action.help not in (None, argparse.SUPPRESS) and \
                    action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in (action.help or "") or "%(default)" in sub.formatter_class(name)._get_help_string(
                    action), (name, action.option_strings)
    age = " ".join(commands["age"].format_help().split())
    assert "same image on every run" in age and "left to right" in age and "(default: 640)" in age
    tiny = commands["tiny"].format_help()
    assert "skin-coloured blobs" in " ".join(tiny.split()) and "dir" in tiny


def test_detector_limits_in_the_parser_match_the_core():
    from cradle2cane.faces import detect

    assert (cli.MIN_DET_SIZE, cli.MAX_DET_SIZE, cli.MIN_FACE_SIZE) == (detect.MIN_DET_SIZE, detect.MAX_DET_SIZE,
                                                                       detect.MIN_FACE_SIZE)


@pytest.mark.parametrize("option, value, words", [
    ("--seed", str(2**64), "outside 0..2**64-1"), ("--seed", "-1", "outside"), ("--seed", "1.5", "whole"),
    ("--strength", "0", "outside (0, 1]"), ("--strength", "1.5", "outside"), ("--id-strength", "nan", "outside"),
    ("--det-thresh", "1", "outside (0, 1)"), ("--det-size", "100000", "outside [160, 2048]"),
    ("--det-size", "650", "multiple of 32"), ("--source-age", "-2", "outside [0, 100]"),
    ("--face", "left", "not all, largest or a face number"),
])
def test_out_of_range_values_are_refused_by_the_parser(tiny_models, photo, tmp_path, capsys, no_model_load,
                                                       option, value, words):
    with pytest.raises(SystemExit) as exit_:
        _run("age", photo, "--models", tiny_models, "--target-age", "70", "--out", tmp_path / "o.png", option, value)
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_largest_seed_is_accepted(tiny_models, photo, tmp_path):
    assert _run("age", photo, "--models", tiny_models, "--target-age", "70", "--out", tmp_path / "o.png",
                "--seed", 2**64 - 1, "--quiet") == 0


# ----------------------------------------------------------------------------- outputs


def test_out_folder_forms(tiny_models, photo, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    for out, expected in ((f"{tmp_path / 'new'}/", tmp_path / "new" / "person_70.png"),
                          (existing, existing / "person_70.png"),
                          (tmp_path / "plain", tmp_path / "plain" / "person_70.png")):
        assert _run("age", photo, "--models", tiny_models, "--target-age", "70", "--out", out, "--quiet") == 0
        assert expected.is_file()


@pytest.mark.parametrize("out, words", [("o.xyz", "unknown image extension '.xyz'"), ("o.png.bak", "unknown image extension '.bak'"),
                                        ("several.png", "2 target ages need a folder")])
def test_bad_out_is_refused_before_loading(tiny_models, photo, tmp_path, capsys, no_model_load, out, words):
    assert _run("age", photo, "--models", tiny_models, "--target-age", "20,70", "--out", tmp_path / out) == 1 \
        if "several" in out else \
        _run("age", photo, "--models", tiny_models, "--target-age", "70", "--out", tmp_path / out) == 1
    assert words in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_out_that_is_the_input_is_refused_under_any_spelling(tiny_models, photo, tmp_path, capsys, no_model_load,
                                                             monkeypatch):
    original = photo.read_bytes()
    link, hard = tmp_path / "link.png", tmp_path / "hard.png"
    link.symlink_to(photo)
    os.link(photo, hard)
    monkeypatch.chdir(photo.parent)
    for out in ("person.png", f"./../{photo.parent.name}/person.png", photo, link, hard):
        assert _run("age", "person.png", "--models", tiny_models, "--target-age", "70", "--out", out,
                    "--overwrite") == 1
        assert "is the input file" in capsys.readouterr().err
    assert photo.read_bytes() == original


def test_existing_output_needs_overwrite(tiny_models, photo, tmp_path, capsys):
    out = tmp_path / "o.png"
    out.write_bytes(b"keep me")
    assert _run("age", photo, "--models", tiny_models, "--target-age", "70", "--out", out) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert _run("age", photo, "--models", tiny_models, "--target-age", "70", "--out", out, "--overwrite",
                "--quiet") == 0
    assert Image.open(out).size == Image.open(photo).size


def test_transparent_photo_to_jpeg_is_refused_before_loading(tiny_models, photo, tmp_path, capsys, no_model_load):
    rgba = tmp_path / "rgba.png"
    Image.open(photo).convert("RGBA").save(rgba)
    assert _run("age", rgba, "--models", tiny_models, "--target-age", "70", "--out", tmp_path / "o.jpg") == 1
    assert "transparency" in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_usual_mode(tiny_models, photo, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert _run("age", photo, "--models", tiny_models, "--target-age", "70", "--out", tmp_path / "o.png",
                    "--quiet") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.png").stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------- failure order


def test_a_photo_without_a_face_fails_without_importing_torch(tiny_models, faceless):
    """Detection runs before anything heavy: a faceless photo is reported without torch, diffusers or
    transformers ever being imported (torch alone costs seconds of start-up)."""
    code = textwrap.dedent(f"""
        import sys
        from cradle2cane.tools.cli import main
        rc = main(["age", {str(faceless)!r}, "--models", {str(tiny_models)!r}, "--target-age", "60",
                   "--out", {str(faceless.with_name("never.png"))!r}, "--quiet"])
        heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
        assert rc == 1 and not heavy, (rc, heavy)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests")
    assert done.returncode == 0, done.stderr
    assert "no face found" in done.stderr and not faceless.with_name("never.png").exists()

def test_failures_come_in_order_and_before_the_model_loads(tiny_models, photo, faceless, tmp_path, capsys,
                                                            no_model_load):
    """Each bad input is reported while everything after it is bad too: option values, then the
    input image, the output, the model files, the faces; the model load never happens."""
    missing_models = tmp_path / "no-models"
    cases = [
        (["--gender", "robot"], photo, tmp_path / "o.xyz", missing_models, "--gender must be"),
        ([], tmp_path / "missing.png", tmp_path / "o.xyz", missing_models, "image file not found"),
        ([], faceless, tmp_path / "o.xyz", missing_models, "unknown image extension"),
        ([], faceless, tmp_path / "o.png", missing_models, "does not exist"),
        (["--strength", "0.1"], faceless, tmp_path / "o.png", tiny_models, "runs no denoising step"),
        ([], faceless, tmp_path / "o.png", tiny_models, "no face found"),
    ]
    for extra, image, out, models, words in cases:
        start = time.process_time()
        assert _run("age", image, "--models", models, "--target-age", "70", "--out", out, *extra) == 1
        err = capsys.readouterr().err
        assert words in err, (words, err)
        assert time.process_time() - start < 20  # seconds of CPU: detection only, never a model load


def test_no_face_advice_names_options_that_exist(tiny_models, faceless, tmp_path, capsys):
    assert _run("age", faceless, "--models", tiny_models, "--target-age", "70", "--out", tmp_path / "o.png") == 1
    err = capsys.readouterr().err
    assert "--det-thresh" in err and "--det-size" in err and "--source-age" in err
    options = {o for a in build_parser()._subparsers._group_actions[0].choices["age"]._actions for o in a.option_strings}
    mentioned = set(re.findall(r"--[a-z][a-z-]+", err))
    assert mentioned and mentioned <= options, mentioned - options
    assert not re.search(r"\b(det_thresh|det_size|min_face_size)\b", err)


# ----------------------------------------------------------------------------- sweep


def test_sweep_writes_a_labelled_strip_and_a_gif(tiny_models, photo, tmp_path, capsys):
    out = tmp_path / "strip.png"
    assert _run("sweep", photo, "--models", tiny_models, "--ages", "10-40:10", "--out", out, "--gif",
                "--tile", 64, "--quiet") == 0
    strip = np.asarray(Image.open(out))
    width = round(260 * 64 / 200)
    assert strip.shape[0] > 64 and strip.shape[1] >= 4 * width  # four tiles, each with its label band
    gif = Image.open(tmp_path / "strip.gif")
    assert gif.n_frames == 4 and gif.info.get("loop") == 0
    assert capsys.readouterr().out.split() == [str(out), str(tmp_path / "strip.gif")]


@pytest.mark.parametrize("name", ["anim.webp", "anim.gif"])
def test_sweep_to_an_animation(tiny_models, photo, tmp_path, name):
    out = tmp_path / name
    assert _run("sweep", photo, "--models", tiny_models, "--ages", "20,60", "--out", out, "--quiet") == 0
    assert Image.open(out).n_frames == 2


def test_sweep_refuses_a_folder(tiny_models, photo, tmp_path, capsys, no_model_load):
    assert _run("sweep", photo, "--models", tiny_models, "--out", f"{tmp_path}/") == 1
    assert "give a file name" in capsys.readouterr().err


# ----------------------------------------------------------------------------- train, tiny


def test_train_command_forwards_to_the_training_program(capsys):
    assert main(["train", "config", "--set", "learning_rate=5e-5"]) == 0
    assert "learning_rate: 5.0e-05" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0 and "cradle2cane train" in capsys.readouterr().out


# ----------------------------------------------------------------------------- processes: signals, encodings, noise

_BLOCKING_WRITER = textwrap.dedent("""
    import argparse, sys, time
    from cradle2cane.files.atomic import atomic_path
    from cradle2cane.tools.arguments import run_command

    def write(args):
        with atomic_path(args.out) as tmp:
            tmp.write_bytes(b"half")
            print("writing", flush=True)
            time.sleep(60)
        return 0

    sys.exit(run_command(argparse.Namespace(func=write, out=sys.argv[1], debug=False, command="x"), "cradle2cane"))
""")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_writing_leaves_no_temporary_file(tmp_path, signum, code):
    folder = tmp_path / "out"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _BLOCKING_WRITER, str(folder / "result.png")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "writing"
    assert len(list(folder.iterdir())) == 1  # the temporary file exists while writing
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert list(folder.iterdir()) == []


def test_odd_path_and_strict_stdout_do_not_fail_a_run(tiny_models, photo, tmp_path):
    """A non-UTF-8 file name printed to an ASCII-only stdout: the run still succeeds."""
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict", "LC_ALL": "C"}
    done = subprocess.run([sys.executable, "-m", "cradle2cane", "age", str(photo), "--models", str(tiny_models),
                           "--target-age", "70", "--out", os.fsdecode(folder) + "/", "--quiet"],
                          capture_output=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.path.isfile(folder + b"/person_70.png")
    assert b"person_70.png" in done.stdout


def test_a_run_is_quiet(tiny_models, photo, tmp_path):
    """No library advice (e.g. transformers' 'install torchvision'), no warnings; --quiet: nothing."""
    base = [sys.executable, "-m", "cradle2cane", "age", str(photo), "--models", str(tiny_models), "--target-age",
            "70"]
    loud = subprocess.run(base + ["--out", str(tmp_path / "a.png")], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert loud.returncode == 0, loud.stderr
    assert "torchvision" not in loud.stderr and "Warning" not in loud.stderr and "LoRA" not in loud.stderr
    quiet = subprocess.run(base + ["--out", str(tmp_path / "b.png"), "--quiet"], capture_output=True, text=True,
                           cwd=ROOT, timeout=600)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip() == str(tmp_path / "b.png")


def test_json_reports_never_replace_a_file_without_overwrite(tiny_models, tmp_path, capsys, no_model_load):
    existing = tmp_path / "report.json"
    existing.write_text("keep me")
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(faces / "30_male.png")
    for argv in (["bench", "--models", tiny_models, "--json", existing],
                 ["evaluate", faces, "--models", tiny_models, "--target-age", "30", "--json", existing]):
        assert _run(*argv) == 1
        assert "--overwrite" in capsys.readouterr().err and existing.read_text() == "keep me"


def test_a_long_library_error_becomes_one_short_line(capsys):
    from cradle2cane.tools.arguments import MAX_ERROR_LENGTH, run_command

    def fail(args):
        raise RuntimeError("size mismatch for layer\n" * 131)

    assert run_command(argparse.Namespace(func=fail, debug=False, command="age"), "cradle2cane") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and len(err) < MAX_ERROR_LENGTH + 100 and "(+130 more lines)" in err


def test_age_photo_checks_its_arguments_before_any_work(tiny_model):
    from cradle2cane.photo import age_photo

    photo = np.zeros((64, 64, 3), np.uint8)
    for kwargs, words in (({"seed": -1}, "seed must be"), ({"seed": 2**64}, "seed must be"),
                          ({"strength": 0.0}, "strength must be in"), ({"id_strength": 2.0}, "id_strength must be"),
                          ({"source_age": 130}, "source age must be"), ({"gender": "x"}, "gender must be"),
                          ({"on_no_face": "ignore"}, "on_no_face")):
        with pytest.raises(ValueError, match=words):  # no detector or models folder given: checked first
            age_photo(tiny_model, photo, 70, **kwargs)


def test_reference_inference_reaches_the_model(tiny_models, photo, tmp_path, monkeypatch):
    from cradle2cane.pipeline import Cradle2Cane

    seen = []
    original = Cradle2Cane.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("reference_inference"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Cradle2Cane, "__call__", spy)
    for extra in ([], ["--reference-inference"]):
        assert _run("age", photo, "--models", tiny_models, "--target-age", "70", "--out", tmp_path / f"{len(extra)}.png",
                    "--quiet", *extra) == 0
    assert seen == [False, True]
