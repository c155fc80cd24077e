"""The pack inside a real ComfyUI: started headless on the CPU, driven over HTTP.

Needs a ComfyUI checkout: ``COMFYUI_DIR=/path/to/ComfyUI`` (and ``COMFYUI_PYTHON``, the Python of its
environment, with this pack's requirements installed; default: this interpreter). Without
``COMFYUI_DIR`` every test here is skipped, with that reason in pytest's summary.

One server serves the whole module: a temporary ``--base-directory`` with this checkout linked into
``custom_nodes/`` and the tiny model set laid out as a ComfyUI user would (``models/cradle2cane``,
the single-file base also in ``models/checkpoints``, the insightface pack in
``models/insightface/models/buffalo_l``). Every shipped API workflow is queued and its outputs read
back; a failing prompt, an out-of-range age and a cancel must leave the server serving.
"""

from __future__ import annotations

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

import numpy as np
import pytest
from node_names import NODE_NAMES

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "example_workflows"
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")

pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR,
    reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout (and COMFYUI_PYTHON at its Python) "
           "to run the pack inside the real server",
)

PHOTO_SIZE = (512, 512)  # assets/astronaut.jpg
TINY = (128, 128)  # the tiny model's resolution: aged crops come out at this size
# output node -> (number of images, size) for each shipped workflow (tiny model set, astronaut photo)
EXPECTED = {
    "cradle2cane_two_pass_aligned_face": {"SaveImage": (1, TINY), "PreviewImage": (1, TINY)},
    "cradle2cane_photo_align_age_paste_back": {"SaveImage": (2, PHOTO_SIZE), "PreviewImage": (2, TINY)},
    "cradle2cane_lifespan_sweep_animation": {"SaveAnimatedWEBP": (1, PHOTO_SIZE), "PreviewImage": (8, TINY)},
    "cradle2cane_age_photo_all_in_one": {"SaveImage": (1, PHOTO_SIZE)},
}
SWEEP_FRAMES = 8  # Lifespan Sweep's default 10..80 step 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ComfyUI and the few HTTP calls the tests need."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, base: Path) -> None:
        self.url, self.process, self.log, self.base = url, process, log, base
        self.client_id = uuid.uuid4().hex

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: dict | None = None):
        request = urllib.request.Request(self.url + path, data=json.dumps(data or {}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {path} -> {exc.code}: {exc.read().decode(errors='replace')}") from exc
        return json.loads(body) if body else None

    def queue(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
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

    def image(self, item: dict):
        from PIL import Image

        query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
        return Image.open(io.BytesIO(self.get(f"/view?{query}")))

    def alive(self) -> bool:
        return self.process.poll() is None and "system" in self.get("/system_stats")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _lay_out_models(base: Path) -> None:
    """The tiny model set where a ComfyUI user keeps the real files."""
    from cradle2cane.testing.tiny import write_tiny_models

    models = base / "models"
    c2c = write_tiny_models(models / "cradle2cane", seed=0)
    (models / "insightface" / "models").mkdir(parents=True)
    shutil.move(str(c2c / "insightface" / "models" / "buffalo_l"), models / "insightface" / "models" / "buffalo_l")
    shutil.rmtree(c2c / "insightface")
    (models / "checkpoints").mkdir()
    single = c2c / "sd_xl_turbo_1.0_fp16.safetensors"
    shutil.copy2(single, models / "checkpoints" / single.name)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy = Path(COMFYUI_DIR)
    assert (comfy / "main.py").is_file(), f"COMFYUI_DIR={comfy} holds no main.py"
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "cradle2cane").symlink_to(ROOT, target_is_directory=True)
    _lay_out_models(base)
    (base / "input").mkdir()
    shutil.copy2(ROOT / "assets" / "astronaut.jpg", base / "input" / "astronaut.jpg")
    shutil.copy2(ROOT / "assets" / "astronaut.jpg", base / "input" / "astronaut_again.jpg")
    from PIL import Image

    Image.new("RGB", PHOTO_SIZE).save(base / "input" / "black.png")

    port = _free_port()
    log = base / "comfyui.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
             "--disable-auto-launch"],
            cwd=comfy, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(f"http://127.0.0.1:{port}", process, log, base)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"ComfyUI exited with {process.returncode}:\n{srv.tail()}"
            try:
                if srv.alive():
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"ComfyUI did not answer in 90s:\n{srv.tail()}"
            time.sleep(0.25)
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def _api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def _ui(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def _error(entry: dict) -> dict:
    return next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")


# ----------------------------------------------------------------------------- the node list


def test_pack_loads_without_import_errors(server):
    log = server.log.read_text(errors="replace")
    assert "custom_nodes/cradle2cane" in log  # listed under "Import times for custom nodes"
    assert "IMPORT FAILED" not in "\n".join(l for l in log.splitlines() if "cradle2cane" in l)
    assert "Unable to parse pyproject.toml" not in log  # ComfyUI reads [tool.comfy] and [project.urls]


def test_object_info_lists_every_node_with_inputs(object_info):
    for node_id, display in NODE_NAMES.items():
        assert node_id in object_info, f"{node_id} missing from /object_info"
        info = object_info[node_id]
        assert info["display_name"] == display
        assert info["category"].startswith("cradle2cane")
        assert info["description"]
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert inputs, node_id
        for name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    loader = object_info["C2C_LoadCradle2Cane"]["input"]["required"]
    assert "Cradle2Cane" in loader["cradle2cane"][1]["options"]
    assert "checkpoints/sd_xl_turbo_1.0_fp16.safetensors" in loader["base"][1]["options"]
    assert "buffalo_l" in object_info["C2C_FaceAlign"]["input"]["required"]["detector"][1]["options"]
    for node_id in ("C2C_FaceAlign", "C2C_AgePhoto"):  # new widget last, new output last: saved graphs stay valid
        info = object_info[node_id]
        assert info["input_order"]["required"][-1] == "no_face"
        assert info["input"]["required"]["no_face"][1]["options"] == ["error", "skip"]
        assert info["output"][-1] == "STRING" and info["output_name"][-1] == "report"
    handles = {t for info in object_info.values() if info["name"].startswith("C2C_") for t in info["output"]}
    assert {"C2C_MODEL", "C2C_FACES", "C2C_AGING", "C2C_IDENTITY", "IMAGE"} <= handles


def test_workflow_templates_are_served(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates["cradle2cane"]) == sorted(EXPECTED)
    graph = server.get("/api/workflow_templates/cradle2cane/cradle2cane_two_pass_aligned_face.json")
    graph = json.loads(graph) if isinstance(graph, bytes) else graph
    assert graph == _ui("cradle2cane_two_pass_aligned_face")


def test_api_twins_follow_the_ui_graphs_under_the_real_schemas(object_info):
    sys.path.insert(0, str(ROOT / "tests" / "comfy_stubs"))
    try:
        from frontend import CORE_NODE_INFO, ui_to_api
    finally:
        sys.path.remove(str(ROOT / "tests" / "comfy_stubs"))
    for name, info in CORE_NODE_INFO.items():  # the stand-in the CI test uses is what the server says
        real = object_info[name]
        assert real["input_order"]["required"] == info["input_order"]["required"], name
        for input_name, spec in info["input"]["required"].items():
            real_spec = real["input"]["required"][input_name]
            assert (real_spec[0] if isinstance(spec[0], str) else list) == (spec[0] if isinstance(spec[0], str) else list)
    for name in EXPECTED:
        assert ui_to_api(_ui(name), object_info) == _api(name), f"{name}: API twin out of date"


# ----------------------------------------------------------------------------- running the workflows


def _check_outputs(server, prompt: dict, entry: dict, name: str) -> dict:
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    found = {}
    for node_id, node in prompt.items():
        if node["class_type"] not in EXPECTED[name]:
            continue
        items = entry["outputs"][node_id]["images"]
        count, size = EXPECTED[name][node["class_type"]]
        assert len(items) == count, (name, node["class_type"], items)
        images = [server.image(item) for item in items]
        for image in images:
            assert image.size == size, (name, node["class_type"], image.size)
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
            assert pixels.std() > 5.0, f"{name}: {node['class_type']} output is blank"
        found[node["class_type"]] = images
    return found


@pytest.fixture(scope="module")
def results(server):
    """Every shipped API workflow, queued as is (results reused by later tests)."""
    done = {}
    for name in EXPECTED:
        prompt = _api(name)
        started = time.monotonic()
        entry = server.wait(server.queue(prompt))
        done[name] = (_check_outputs(server, prompt, entry, name), time.monotonic() - started)
    return done


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_workflow_runs(results, name):
    outputs, seconds = results[name]
    assert outputs and seconds < 120


def test_paste_back_changes_the_face_and_keeps_the_rest(results):
    from PIL import Image

    original = np.asarray(Image.open(ROOT / "assets" / "astronaut.jpg").convert("RGB"), dtype=np.int16)
    young, old = (np.asarray(i.convert("RGB"), dtype=np.int16)
                  for i in results["cradle2cane_photo_align_age_paste_back"][0]["SaveImage"])
    face = (slice(80, 170), slice(180, 260))  # inside the astronaut's face box (170,61)-(272,181)
    assert np.abs(young[face] - original[face]).mean() > 2 and np.abs(old[face] - young[face]).mean() > 1
    corner = (slice(0, 60), slice(0, 60))  # far outside the face mask: untouched
    assert np.abs(young[corner] - original[corner]).max() <= 1 and np.abs(old[corner] - original[corner]).max() <= 1


def test_lifespan_sweep_is_one_animation(results):
    outputs = results["cradle2cane_lifespan_sweep_animation"][0]
    assert len(outputs["PreviewImage"]) == SWEEP_FRAMES  # one aged face per age, in age order
    webp = outputs["SaveAnimatedWEBP"][0]
    # WebP merges frames that encode alike; the tiny random model changes some ages very little.
    assert webp.format == "WEBP" and webp.is_animated and 2 <= webp.n_frames <= SWEEP_FRAMES


# ----------------------------------------------------------------------------- errors and cancelling


def test_no_face_is_a_clear_error_and_the_server_keeps_serving(server, results):
    prompt = _api("cradle2cane_photo_align_age_paste_back")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    prompt[loader]["inputs"]["image"] = "black.png"
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "error"
    error = _error(entry)
    assert error["node_type"] == "C2C_FaceAlign"
    assert "no face found" in error["exception_message"] and "det_thresh" in error["exception_message"]
    assert "no_face = skip" in error["exception_message"]
    assert server.alive()


def test_no_face_skip_returns_the_photo_unchanged_and_reports_it(server, results):
    from PIL import Image

    prompt = _api("cradle2cane_age_photo_all_in_one")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    node = next(k for k, v in prompt.items() if v["class_type"] == "C2C_AgePhoto")
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    prompt[loader]["inputs"]["image"] = "black.png"
    prompt[node]["inputs"]["no_face"] = "skip"
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    (item,) = entry["outputs"][save]["images"]  # one photo x one target age
    original = np.asarray(Image.open(server.base / "input" / "black.png").convert("RGB"))
    assert np.array_equal(np.asarray(server.image(item).convert("RGB")), original)
    (report,) = entry["outputs"][node]["text"]  # the node's ui text, in the history as for the "executed" message
    assert report.splitlines()[0].endswith("aged the face(s) of 0 of 1 image(s) to 70")
    assert "image 0 skipped" in report and "no face found" in report
    log = server.log.read_text(errors="replace")
    assert "image 0 of the batch" in log and "passing the photo through unchanged" in log  # the warning
    assert server.alive()


def test_out_of_range_age_is_a_clear_error(server, results):
    prompt = _api("cradle2cane_two_pass_aligned_face")
    first = next(k for k, v in prompt.items() if v["class_type"] == "C2C_AdaNIFirstPass")
    prompt[first]["inputs"]["target_ages"] = "70, 130"
    entry = server.wait(server.queue(prompt))
    error = _error(entry)
    assert error["node_type"] == "C2C_AdaNIFirstPass"
    assert "130" in error["exception_message"] and "0 and 100" in error["exception_message"]
    assert server.alive()


def test_interrupt_stops_a_run_and_the_next_prompt_gives_the_same_result(server, results):
    long_sweep = _api("cradle2cane_lifespan_sweep_animation")
    sweep = next(k for k, v in long_sweep.items() if v["class_type"] == "C2C_LifespanSweep")
    long_sweep[sweep]["inputs"]["ages"] = "0-100:1"  # 101 ages: long enough to cancel half-way
    prompt_id = server.queue(long_sweep)
    deadline = time.monotonic() + 60
    while not any(item[1] == prompt_id for item in server.get("/queue")["queue_running"]):
        assert time.monotonic() < deadline, "the long sweep never started"
        time.sleep(0.05)
    time.sleep(1.0)  # into the sampling loop
    interrupted_at = time.monotonic()
    server.post("/interrupt")
    entry = server.wait(prompt_id)
    stopped_after = time.monotonic() - interrupted_at
    interrupted = [data for kind, data in entry["status"]["messages"] if kind == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_id"] == sweep, entry["status"]["messages"]  # stopped mid-sweep
    assert stopped_after < 5.0, f"took {stopped_after:.1f}s to stop"
    assert server.alive()

    # Same all-in-one prompt as before, on a copy of the photo (so ComfyUI's cache does not answer):
    # equal pixels prove the cancelled run left the model (LoRA switch included) as it was.
    prompt = _api("cradle2cane_age_photo_all_in_one")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    prompt[loader]["inputs"]["image"] = "astronaut_again.jpg"
    entry = server.wait(server.queue(prompt))
    again = _check_outputs(server, prompt, entry, "cradle2cane_age_photo_all_in_one")
    before = results["cradle2cane_age_photo_all_in_one"][0]
    assert np.array_equal(np.asarray(again["SaveImage"][0]), np.asarray(before["SaveImage"][0]))
