"""A real ComfyUI with this pack, started headless on the CPU, for the integration and browser tests.

Needs a ComfyUI checkout: ``COMFYUI_DIR=/path/to/ComfyUI`` and ``COMFYUI_PYTHON``, the Python of its
environment with this pack's requirements installed (default: this interpreter). ``.ci/run`` builds
one; without ``COMFYUI_DIR`` the tests that need it are skipped, saying how to enable them. With
``COMFYUI_TESTS_REQUIRED=1`` (CI) a missing ComfyUI, Playwright or Chromium fails instead.

The server runs on a temporary ``--base-directory``: this checkout linked into ``custom_nodes/``,
the tiny model set laid out as a ComfyUI user would (``models/cradle2cane``, the single-file base
also in ``models/checkpoints`` for the core loader, the insightface pack in
``models/insightface/models/buffalo_l``), a random TAESD-XL in ``models/vae_approx`` for the core
``VAELoader`` (ComfyUI cannot detect the tiny SDXL as a checkpoint; ComfyUI's own class writes it),
and a test-only node pack whose one route lists ``comfy.model_management.current_loaded_models``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from node_names import NODE_NAMES

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
PHOTO_SIZE = (512, 512)  # assets/astronaut.jpg
HOW_TO_ENABLE = ("use a ComfyUI >= 0.3.64 checkout DEST with its own Python environment, "
                 "install this pack's requirements into its Python and run install.py with it, then set "
                 "COMFYUI_DIR=DEST and COMFYUI_PYTHON=its python (see docs/comfyui.md, 'Tests')")

PROBE_PACK = '''
"""Test-only: GET /c2c_test/loaded_models lists ComfyUI's loaded models."""
import comfy.model_management as mm
from aiohttp import web
from server import PromptServer


@PromptServer.instance.routes.get("/c2c_test/loaded_models")
async def loaded_models(request):
    return web.json_response([{"name": type(entry.model.model).__name__, "size": entry.model.model_size(),
                               "loaded": entry.model.loaded_size(), "device": str(entry.device)}
                              for entry in mm.current_loaded_models if entry.model is not None])


NODE_CLASS_MAPPINGS = {}
'''


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PACK_MARKS = ("cradle2cane", "C2C_", *NODE_NAMES.values())  # text that ties a browser message to this pack


def skip_unless(condition: bool, reason: str):
    """Skip (or, under ``COMFYUI_TESTS_REQUIRED=1``, fail) the tests of a module."""
    if condition:
        return pytest.mark.skipif(False, reason="")
    if os.environ.get("COMFYUI_TESTS_REQUIRED") == "1":
        pytest.fail(f"COMFYUI_TESTS_REQUIRED=1 but {reason}", pytrace=False)
    return pytest.mark.skip(reason=reason)


requires_comfyui = skip_unless(bool(COMFYUI_DIR), f"COMFYUI_DIR is not set: {HOW_TO_ENABLE}")


def api_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def workflow_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def node_of(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


class Server:
    """A running ComfyUI and the few HTTP calls the tests need."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, base: Path) -> None:
        self.url, self.process, self.log, self.base = url, process, log, base
        self.client_id = uuid.uuid4().hex

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def request(self, path: str, data: dict | None = None) -> tuple[int, str]:
        """POST ``data`` as JSON; (status, body text), errors included."""
        request = urllib.request.Request(self.url + path, data=json.dumps(data or {}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def post(self, path: str, data: dict | None = None):
        status, body = self.request(path, data)
        assert status == 200, f"POST {path} -> {status}: {body}"
        return json.loads(body) if body else None

    def queue(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            assert self.process.poll() is None, f"ComfyUI died:\n{self.tail()}"
            time.sleep(0.1)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout:.0f}s:\n{self.tail()}")

    def run(self, prompt: dict) -> dict:
        """Queue ``prompt``, wait, and return its history entry, which must be a success."""
        entry = self.wait(self.queue(prompt))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
        return entry

    def image(self, item: dict):
        from PIL import Image

        query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
        return Image.open(io.BytesIO(self.get(f"/view?{query}")))

    def loaded_models(self) -> list[dict]:
        """ComfyUI's ``current_loaded_models``: name (the model's class), size, loaded bytes, device."""
        return self.get("/c2c_test/loaded_models")

    def free(self, timeout: float = 30.0) -> list[dict]:
        """The UI's "Unload models" with the node cache: ``POST /free`` (ComfyUI acts on it between
        prompts, so wait until the list stops shrinking); the loaded models afterwards."""
        self.post("/free", {"unload_models": True, "free_memory": True})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loaded = self.loaded_models()
            if not loaded:
                return loaded
            time.sleep(0.2)
        return self.loaded_models()

    def alive(self) -> bool:
        return self.process.poll() is None and "system" in self.get("/system_stats")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


WRITE_TAESDXL = """
import sys
import torch
from safetensors.torch import save_file
from comfy.cli_args import args
args.cpu = True  # before comfy.model_management looks for a GPU
from comfy.taesd.taesd import TAESD
torch.manual_seed(0)
model = TAESD()
for part in ("encoder", "decoder"):
    save_file(getattr(model, "taesd_" + part).state_dict(), f"{sys.argv[1]}/taesdxl_{part}.safetensors")
"""


def lay_out_models(base: Path, python: str) -> None:
    """The tiny model set where a ComfyUI user keeps the real files, and the TAESD-XL."""
    from cradle2cane.testing.tiny import write_tiny_models

    models = base / "models"
    c2c = write_tiny_models(models / "cradle2cane", seed=0)
    (models / "insightface" / "models").mkdir(parents=True)
    shutil.move(str(c2c / "insightface" / "models" / "buffalo_l"), models / "insightface" / "models" / "buffalo_l")
    shutil.rmtree(c2c / "insightface")
    (models / "checkpoints").mkdir()
    single = c2c / "sd_xl_turbo_1.0_fp16.safetensors"
    shutil.copy2(single, models / "checkpoints" / single.name)
    (models / "vae_approx").mkdir()
    subprocess.run([python, "-c", WRITE_TAESDXL, str(models / "vae_approx")], cwd=COMFYUI_DIR, check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(base: Path) -> Iterator[Server]:
    """ComfyUI on ``base`` (created as described above), stopped on exit."""
    from PIL import Image

    comfy = Path(COMFYUI_DIR)
    assert (comfy / "main.py").is_file(), f"COMFYUI_DIR={comfy} holds no main.py"
    python = COMFYUI_PYTHON
    (base / "custom_nodes" / "c2c_test_probe").mkdir(parents=True)
    (base / "custom_nodes" / "c2c_test_probe" / "__init__.py").write_text(PROBE_PACK)
    (base / "custom_nodes" / "cradle2cane").symlink_to(ROOT, target_is_directory=True)
    lay_out_models(base, python)
    (base / "input").mkdir()
    for name in ("astronaut.jpg", "astronaut_again.jpg", "astronaut_third.jpg"):  # same pixels, new cache keys
        shutil.copy2(ROOT / "assets" / "astronaut.jpg", base / "input" / name)
    Image.new("RGB", PHOTO_SIZE).save(base / "input" / "black.png")

    port = _free_port()
    log = base / "comfyui.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
             "--disable-auto-launch"],
            cwd=comfy, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log, base)
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine takes minutes to import ComfyUI
        while True:
            assert process.poll() is None, f"ComfyUI exited with {process.returncode}:\n{server.tail()}"
            try:
                if server.alive():
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"ComfyUI did not answer in 300s:\n{server.tail()}"
            time.sleep(0.25)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Frontend:
    """One browser page on the server, with everything it logged and every failed request."""

    def __init__(self, page, server, shots: Path) -> None:
        self.page, self.server, self.shots = page, server, shots
        self.errors: list[str] = []  # console errors and uncaught exceptions, with their stacks
        self.failed: list[str] = []  # "status url" of every response >= 400
        page.on("console", lambda m: self.errors.append(f"{m.text} @ {m.location.get('url')}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"{e} {e.stack}"))
        page.on("response", lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.route(lambda url: not url.startswith(server.url), self._offline)

    @staticmethod
    def _offline(route) -> None:
        if "api.comfy.org/releases" in route.request.url:
            route.fulfill(status=200, content_type="application/json", body="[]")
        else:
            route.abort()

    def open(self) -> None:
        self.page.set_default_timeout(120_000)  # a shared 2-core machine renders slowly
        self.server.request("/api/settings/Comfy.TutorialCompleted", True)
        self.page.goto(self.server.url)
        self.page.wait_for_function("window.app && window.app.graph && window.app.extensionManager", timeout=180_000)

    def reset(self) -> None:
        """Close whatever a previous step left open (search box, dialog, menu) and empty the graph."""
        for _ in range(3):
            self.page.keyboard.press("Escape")
        self.page.evaluate("() => app.graph.clear()")

    def ours(self) -> list[str]:
        """Errors and failed requests that mention this pack."""
        return [m for m in self.errors + self.failed if any(mark in m for mark in PACK_MARKS)]

    def load(self, graph: dict) -> None:
        """As a user dropping the file on the canvas, without the missing-nodes/models dialogs."""
        self.page.evaluate("graph => app.loadGraphData(graph, true, true, null, "
                           "{showMissingNodesDialog: false, showMissingModelsDialog: false})", graph)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"))
