"""Installation: the ONNX runtime decision of install.py on fake environments, the packaging
(`training/` installs as `cradle2cane.training`, never as a top-level `training`), and the
model downloads' `hf download` commands."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cradle2cane.loading import downloads as D
from cradle2cane.loading import paths as W
from cradle2cane.tools.cli import main
from cradle2cane.tools.onnx_runtime import CPU, GPU, INSIGHTFACE, Environment, Plan, decide, run

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- ONNX runtime decision


@pytest.mark.parametrize("env, commands", [
    # nothing installed: the build that fits the machine
    (Environment({}, False, cuda=False), [["install", CPU], ["install", "--no-deps", INSIGHTFACE]]),
    (Environment({}, False, cuda=True, insightface=True), [["install", GPU]]),
    # one working runtime: kept, except the plain CPU build where CUDA is usable
    (Environment({CPU: "1.20.1"}, True, cuda=False, insightface=True), []),
    (Environment({GPU: "1.20.1"}, True, cuda=False, insightface=True), []),
    (Environment({GPU: "1.20.1"}, True, cuda=True, insightface=True), []),
    (Environment({"onnxruntime-directml": "1.20.1"}, True, cuda=True, insightface=True), []),
    (Environment({CPU: "1.20.1"}, True, cuda=True, insightface=True), [["uninstall", "-y", CPU], ["install", GPU]]),
    # one broken runtime: reinstalled as it was
    (Environment({GPU: "1.19.0"}, False, cuda=True, insightface=True),
     [["install", "--force-reinstall", "--no-deps", f"{GPU}==1.19.0"]]),
    # several (insightface pulled the CPU build beside the user's): the user's build, reinstalled cleanly
    (Environment({CPU: "1.22.0", GPU: "1.20.1"}, True, cuda=True, insightface=True),
     [["uninstall", "-y", CPU, GPU], ["install", "--no-deps", f"{GPU}==1.20.1"]]),
    (Environment({CPU: "1.22.0", GPU: "1.20.1"}, True, cuda=False, insightface=True),
     [["uninstall", "-y", CPU, GPU], ["install", "--no-deps", f"{GPU}==1.20.1"]]),
    (Environment({CPU: "1.22.0", "onnxruntime-openvino": "1.20.0"}, False, cuda=False, insightface=True),
     [["uninstall", "-y", CPU, "onnxruntime-openvino"], ["install", "--no-deps", "onnxruntime-openvino==1.20.0"]]),
])
def test_onnx_runtime_decision(env, commands):
    assert decide(env).commands == commands


def test_switch_to_gpu_falls_back_to_the_cpu_build_when_it_does_not_import():
    plan = decide(Environment({CPU: "1.22.0"}, True, cuda=True, insightface=True))
    calls, states = [], iter([Environment({GPU: "1.22.0"}, False), Environment({CPU: "1.22.0"}, True, ("CPUExecutionProvider",))])
    lines = []
    code = run(plan, pip=lambda args: calls.append(list(args)) or 0, check=lambda: next(states), report=lines.append)
    assert code == 0
    assert calls == plan.commands + plan.fallback
    assert calls[-1] == ["install", "--force-reinstall", "--no-deps", f"{CPU}==1.22.0"]
    assert "onnxruntime 1.22.0" in lines[-1]


def test_run_reports_failure_when_two_runtimes_remain():
    lines = []
    code = run(Plan("test"), pip=lambda args: 0, check=lambda: Environment({CPU: "1", GPU: "1"}, True),
               report=lines.append)
    assert code == 1 and "still not right" in lines[-1]


def test_inspect_sees_this_environment():
    """The probe on the real interpreter running the tests: one runtime, importable."""
    from cradle2cane.tools.onnx_runtime import inspect

    env = inspect()
    assert env.works and len(env.runtimes) == 1 and "CPUExecutionProvider" in env.providers and env.insightface
    assert decide(env).commands == ([] if not env.cuda or GPU in env.runtimes else decide(env).commands)


# ----------------------------------------------------------------------------- packaging


def test_pyproject_lists_every_package_and_maps_training():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cradle2cane").rglob("__init__.py")}
    assert listed == on_disk | {"cradle2cane.training"}
    assert project["tool"]["setuptools"]["package-dir"] == {"cradle2cane.training": "training"}
    assert project["project"]["scripts"]["cradle2cane"] == "cradle2cane.tools.cli:main"
    assert (ROOT / "training" / "defaults.yaml").is_file()


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_install_gives_cradle2cane_training_and_no_top_level_training(tmp_path, editable):
    """A fresh venv (no dependencies needed: both packages import cheaply): `import training`
    must not resolve, `cradle2cane.training` must, with its defaults.yaml."""
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                ".pytest_cache", "tests"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    if editable:  # this interpreter's setuptools builds it, into the fresh venv
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))}
        command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                   "--no-build-isolation", "-e", str(source)]
    else:
        wheels = tmp_path / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "-w", str(wheels), str(source)], check=True, cwd=tmp_path)
        command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                   *map(str, wheels.glob("*.whl"))]
    subprocess.run(command, check=True, cwd=tmp_path, env=env if editable else None)
    code = ("import importlib.util as u, pathlib\n"
            "assert u.find_spec('training') is None, u.find_spec('training')\n"
            "import cradle2cane.training as t\n"
            "assert (pathlib.Path(t.__file__).parent / 'defaults.yaml').is_file()\n"
            "print(t.__name__)\n")
    done = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cradle2cane.training"


# ----------------------------------------------------------------------------- downloads

# The files of the repositories (as listed on the hub) that the --include patterns choose from.
REPOSITORY_FILES = {
    "stabilityai/sdxl-turbo": [
        ".gitattributes", "LICENSE.md", "README.md", "image.png", "model_index.json", "output_tile.jpg",
        "scheduler/scheduler_config.json", "sd_xl_turbo_1.0.safetensors", "sd_xl_turbo_1.0_fp16.safetensors",
        *[f"{part}/{name}" for part in ("text_encoder", "text_encoder_2")
          for name in ("config.json", "model.safetensors", "model.fp16.safetensors")],
        *[f"{part}/{name}" for part in ("tokenizer", "tokenizer_2")
          for name in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")],
        *[f"{part}/{name}" for part in ("unet", "vae")
          for name in ("config.json", "diffusion_pytorch_model.safetensors",
                       "diffusion_pytorch_model.fp16.safetensors")],
    ],
    "madebyollin/sdxl-vae-fp16-fix": [".gitattributes", "README.md", "config.json", "diffusion_pytorch_model.bin",
                                      "diffusion_pytorch_model.safetensors", "sdxl.vae.safetensors",
                                      "sdxl_vae.safetensors", "images/sdxl-vae-fp16-fix-comparison.png"],
    "openai/clip-vit-large-patch14": [".gitattributes", "README.md", "config.json", "flax_model.msgpack",
                                      "merges.txt", "model.safetensors", "preprocessor_config.json",
                                      "pytorch_model.bin", "special_tokens_map.json", "tf_model.h5",
                                      "tokenizer.json", "tokenizer_config.json", "vocab.json"],
}


def _chosen(download: D.Download) -> list[str]:
    """The files `hf download --include` fetches (the hub matches with fnmatch, `*` spans `/`)."""
    return [f for f in REPOSITORY_FILES[download.repo] if any(fnmatch.fnmatch(f, p) for p in download.include)]


def test_include_patterns_fetch_only_the_files_the_loader_reads():
    assert _chosen(D.BASE_SINGLE_FILE) == ["sd_xl_turbo_1.0_fp16.safetensors"]
    folder = _chosen(D.BASE_FOLDER)
    assert "model_index.json" in folder and "unet/diffusion_pytorch_model.fp16.safetensors" in folder
    assert not any(f.endswith((".safetensors", ".bin")) and ".fp16." not in f for f in folder), folder
    assert len(folder) == 1 + 1 + 2 * 2 + 2 * 4 + 2 * 2
    assert _chosen(D.VAE) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert sorted(_chosen(D.CLIP)) == ["config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
                                       "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                                       "vocab.json"]


OLD_HUB_CLI = "huggingface" + "-cli"  # gone in huggingface_hub >= 1.0 (spelled apart: no match in a search)

def test_error_messages_and_download_command_use_hf_download(tmp_path, capsys):
    for source in W.SOURCES.values():
        assert "hf download " in source and OLD_HUB_CLI not in source
    assert main(["download", "--models", str(tmp_path / "m"), "--print", "--base", "folder"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [d.shell_line(str(tmp_path / "m")) for d in D.download_plan("folder")]
    assert lines[0] == (f'hf download stabilityai/sdxl-turbo --include "*.json" --include "*.txt" '
                        f'--include "*.fp16.safetensors" --local-dir {tmp_path / "m" / "sdxl-turbo"}')


def test_download_runs_exactly_the_listed_commands(tmp_path, capsys):
    """A stand-in `hf` on PATH records its arguments (the hub is not reachable from tests)."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "hf"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" >> {log}\necho >> {log}\n")
    fake.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{fake.parent}{os.pathsep}{old}"
    try:
        assert main(["download", "--models", str(tmp_path / "m"), "--no-vae"]) == 0
    finally:
        os.environ["PATH"] = old
    calls = [line.rstrip("|").split("|") for line in log.read_text().splitlines()]
    assert calls == [d.command(str(tmp_path / "m"))[1:] for d in D.download_plan("file", vae=False)]


def test_hf_parses_the_commands_as_intended(monkeypatch):
    """The real `hf` command line parses each command into the intended repository, patterns and
    folder (its download functions replaced by a recorder)."""
    cli = pytest.importorskip("huggingface_hub.cli.download")
    from click.testing import CliRunner

    from huggingface_hub.cli.hf import app  # a click group

    calls = []
    monkeypatch.setattr(cli, "snapshot_download", lambda **kw: calls.append(kw) or "x")
    monkeypatch.setattr(cli, "hf_hub_download", lambda **kw: calls.append(kw) or "x")
    for download in D.DOWNLOADS.values():
        calls.clear()
        result = CliRunner().invoke(app, download.command("models")[1:])
        assert result.exit_code == 0, result.output
        (kwargs,) = calls
        assert kwargs["repo_id"] == download.repo
        assert list(kwargs["allow_patterns"]) == list(download.include)
        assert Path(kwargs["local_dir"]) == Path("models") / download.local_dir


def test_a_folder_of_fp16_weights_only_loads(tiny_models, tmp_path):
    """The diffusers folder as `--include "*.fp16.safetensors"` downloads it (no full-precision
    weight files) loads and runs."""
    import shutil

    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from cradle2cane import Cradle2Cane

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models, ignore=shutil.ignore_patterns(W.BASE_DIR, *W.BASE_SINGLE_FILES))
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(tiny_models / W.BASE_DIR))
    pipe.save_pretrained(str(models / W.BASE_DIR), variant="fp16")
    assert not list((models / W.BASE_DIR).rglob("diffusion_pytorch_model.safetensors"))
    model = Cradle2Cane.from_pretrained(models, device="cpu", dtype=torch.float32)
    faces = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model(faces, [60], 30, "male", seed=1).images).all()


def test_readme_shows_the_same_download_lines():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for download in D.download_plan("file"):
        assert download.shell_line("models") in readme, download.shell_line("models")
    assert D.BASE_FOLDER.shell_line("models") in readme
    assert OLD_HUB_CLI not in readme
