"""The command line end to end on the tiny set, and the cheap, ComfyUI-free import."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cradle2cane.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def astronaut_face(tmp_path_factory):
    """A real public-domain photo (skimage's astronaut), cropped to her face and resized."""
    from skimage import data

    photo = data.astronaut()[20:260, 130:370]
    path = tmp_path_factory.mktemp("inputs") / "astronaut_face.png"
    Image.fromarray(photo).resize((256, 256)).save(path)
    return path


def _run(*argv):
    return main([str(a) for a in argv])


def test_age_aligned_face_twice_identically(tiny_models, astronaut_face, tmp_path, capsys):
    out1, out2 = tmp_path / "a.png", tmp_path / "b.png"
    for out in (out1, out2):
        assert _run("age", astronaut_face, "--models", tiny_models, "--aligned", "--target-age", 70,
                    "--source-age", 35, "--gender", "female", "--seed", 5, "--out", out, "--quiet") == 0
    a, b = np.asarray(Image.open(out1)), np.asarray(Image.open(out2))
    assert a.shape == (128, 128, 3) and np.array_equal(a, b) and a.std() > 1
    assert str(out1) in capsys.readouterr().out


def test_reference_inference_flag_reaches_the_core(tiny_models, astronaut_face, tmp_path):
    outs = {flag: tmp_path / f"{flag or 'default'}.png" for flag in ("", "--reference-inference")}
    for flag, out in outs.items():
        assert _run("age", astronaut_face, "--models", tiny_models, "--aligned", "--target-age", 70, "--source-age",
                    35, "--gender", "female", "--seed", 5, "--out", out, "--quiet", *([flag] if flag else [])) == 0
    default, reference = (np.asarray(Image.open(p)).astype(int) for p in outs.values())
    assert (default != reference).any()  # the switch reaches the core (its effect is tested there)


def test_several_ages_write_a_folder(tiny_models, astronaut_face, tmp_path):
    out = tmp_path / "sweep"
    assert _run("age", astronaut_face, "--models", tiny_models, "--aligned", "--target-age", 10,
                "--target-age", 60, "--source-age", 35, "--gender", "female", "--out", out, "--quiet") == 0
    assert sorted(p.name for p in out.iterdir()) == ["astronaut_face_10.png", "astronaut_face_60.png"]


@pytest.mark.parametrize("extra, message", [
    (["--target-age", "130", "--source-age", "30", "--gender", "male"], "--target-age must be between 0 and 100"),
    (["--target-age", "30", "--source-age", "30", "--gender", "robot"], "--gender must be 'male' or 'female'"),
    (["--target-age", "30"], "--aligned needs --source-age and --gender"),
])
def test_bad_arguments_fail_with_one_line_and_no_output(tiny_models, astronaut_face, tmp_path, capsys, extra,
                                                          message):
    out = tmp_path / "out.png"
    code = _run("age", astronaut_face, "--models", tiny_models, "--aligned", "--out", out, "--quiet", *extra)
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_corrupt_image_and_missing_models(tiny_models, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "o" / "out.png"
    assert _run("age", bad, "--models", tiny_models, "--aligned", "--target-age", 30, "--source-age", 30,
                "--gender", "male", "--out", out) != 0
    assert "broken.png" in capsys.readouterr().err
    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(good)
    assert _run("age", good, "--models", tmp_path / "none", "--aligned", "--target-age", 30, "--source-age", 30,
                "--gender", "male", "--out", out) != 0
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_grey_rgba_16bit_and_palette_inputs_are_converted(tiny_models, tmp_path, mode):
    image = Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)).convert(
        "RGB" if mode == "I;16" else mode)
    if mode == "I;16":
        image = Image.fromarray((np.random.default_rng(0).random((96, 96)) * 65535).astype(np.uint16))
    src = tmp_path / f"in_{mode.replace(';', '')}.png"
    image.save(src)
    out = tmp_path / "out.png"
    assert _run("age", src, "--models", tiny_models, "--aligned", "--target-age", 50, "--source-age", 30,
                "--gender", "male", "--out", out, "--quiet") == 0
    with Image.open(out) as aged:
        assert aged.mode == ("L" if mode in ("L", "I;16") else "RGB")  # a grey file comes back as a grey file


def test_debug_shows_the_traceback(tiny_models, tmp_path):
    with pytest.raises(ValueError):
        _run("--debug", "age", tmp_path / "x.png", "--models", tiny_models, "--aligned", "--target-age", 300,
             "--source-age", 30, "--gender", "male", "--out", tmp_path / "o.png")


def test_tiny_set_is_deterministic(tmp_path):
    from cradle2cane.testing.tiny import write_tiny_models

    def digest(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    a = digest(write_tiny_models(tmp_path / "a", seed=3))
    assert main(["tiny", str(tmp_path / "b"), "--seed", "3"]) == 0
    b = digest(tmp_path / "b")
    assert a == b and "Cradle2Cane/pytorch_lora_weights.safetensors" in a
    assert "insightface/models/buffalo_l/det_10g.onnx" in a and "sd_xl_turbo_1.0_fp16.safetensors" in a
    with pytest.raises(FileExistsError):
        write_tiny_models(tmp_path / "a", seed=3)
    assert main(["tiny", str(tmp_path / "a")]) == 1  # refuses to overwrite, one line, exit 1


def test_core_imports_cheaply_and_without_comfyui():
    """The package and its command line (all subcommands) import without torch & co; every module of the core imports
    without ComfyUI."""
    code = ("import sys, pkgutil, importlib, cradle2cane, cradle2cane.tools.cli\n"
            "cradle2cane.tools.cli.build_parser()\n"  # every subcommand registered, as `--help` does
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'insightface', 'onnxruntime', 'cv2')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "names = [m.name for m in pkgutil.walk_packages(cradle2cane.__path__, 'cradle2cane.')"
            " if not m.name.endswith('__main__')]\n"
            "assert len(names) > 30, names\n"
            "for name in names: importlib.import_module(name)\n"
            "comfy = [m for m in sys.modules if m.split('.')[0] in"
            " ('comfy', 'comfy_api', 'folder_paths', 'nodes', 'server')]\n"
            "assert not comfy, comfy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "tests")


def test_core_source_never_imports_comfyui():
    banned = ("import comfy", "from comfy", "import folder_paths", "from folder_paths", "import server",
              "from server", "from nodes", "import nodes")
    for path in (ROOT / "cradle2cane").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert not line.strip().startswith(banned), f"{path}: {line}"
