"""The pack inside a real ComfyUI: started headless on the CPU, driven over HTTP.

The server (``tests/comfyui_server.py``) needs ``COMFYUI_DIR``; without it every test here is
skipped, with the reason in pytest's summary. Every shipped API workflow is queued and its outputs
read back; ComfyUI's memory manager must list our model groups after a run and release them on
``POST /free``; a workflow with a core ComfyUI model loader runs beside ours; crafted file
choices are refused; a failing prompt, an out-of-range age and a cancel leave the server serving.
"""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
from comfyui_server import (COMFYUI_DIR, COMFYUI_PYTHON, PHOTO_SIZE, ROOT, api_workflow as _api, node_of,
                            requires_comfyui, ui_workflow as _ui)
from node_names import NODE_NAMES

pytestmark = requires_comfyui

TINY = (128, 128)  # the tiny model's resolution: aged crops come out at this size
# output node -> (number of images, size) for each shipped workflow (tiny model set, astronaut photo)
EXPECTED = {
    "cradle2cane_two_pass_aligned_face": {"SaveImage": (1, TINY), "PreviewImage": (1, TINY)},
    "cradle2cane_photo_align_age_paste_back": {"SaveImage": (2, PHOTO_SIZE), "PreviewImage": (2, TINY)},
    "cradle2cane_lifespan_sweep_animation": {"SaveAnimatedWEBP": (1, PHOTO_SIZE), "PreviewImage": (8, TINY)},
    "cradle2cane_age_photo_all_in_one": {"SaveImage": (1, PHOTO_SIZE)},
}
SWEEP_FRAMES = 8  # Lifespan Sweep's default 10..80 step 10
GROUPS = {f"Cradle2Cane_{name}" for name in ("text_encoders", "unet", "vae", "identity")}


@pytest.fixture(scope="module")
def server(comfyui):
    return comfyui


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


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
    # Within a UNet step or two; generous because the CI machine is shared (a full sweep takes minutes).
    assert stopped_after < 20.0, f"took {stopped_after:.1f}s to stop"
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


# ----------------------------------------------------------------------------- ComfyUI's memory manager


def _ours(loaded: list[dict]) -> dict[str, dict]:
    return {m["name"]: m for m in loaded if m["name"] in GROUPS}


def _age_photo(image: str) -> dict:
    prompt = _api("cradle2cane_age_photo_all_in_one")
    prompt[node_of(prompt, "LoadImage")]["inputs"]["image"] = image
    return prompt


def _saved(server, prompt: dict, entry: dict) -> np.ndarray:
    (item,) = entry["outputs"][node_of(prompt, "SaveImage")]["images"]
    return np.asarray(server.image(item).convert("RGB"))


def test_comfyui_loads_our_groups_and_free_releases_them(server, results):
    """After a run ComfyUI lists the four groups with their full weight sizes; "Unload models" with the
    node cache (POST /free) removes them; the next run loads them again and gives the same image."""
    first = _saved(server, _api("cradle2cane_age_photo_all_in_one"),
                   server.run(_age_photo("astronaut_third.jpg")))  # a new cache key: the node runs
    ours = _ours(server.loaded_models())
    assert set(ours) == GROUPS, server.loaded_models()
    for model in ours.values():
        assert model["loaded"] == model["size"] > 0 and model["device"] == "cpu", model  # whole, honest sizes
    assert server.free() == []  # nothing of ours (nor anything else) is left loaded
    prompt = _age_photo("astronaut_third.jpg")  # same prompt: after free_memory nothing is cached
    again = server.run(prompt)
    assert set(_ours(server.loaded_models())) == GROUPS
    assert np.array_equal(_saved(server, prompt, again), first)


def test_unloaded_groups_are_loaded_again_from_the_cached_model(server, results):
    """Unload models without freeing the node cache: the loader's output stays cached and the next
    Cradle2Cane node has ComfyUI load the groups back."""
    prompt = _age_photo("astronaut.jpg")
    before = _saved(server, prompt, server.run(prompt))
    server.post("/free", {"unload_models": True})
    deadline = time.monotonic() + 30
    while _ours(server.loaded_models()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ours(server.loaded_models())
    prompt = _age_photo("astronaut_again.jpg")  # same pixels, a new cache key for LoadImage and Age Photo
    entry = server.run(prompt)
    executed = {kind: data for kind, data in entry["status"]["messages"]}["execution_cached"]["nodes"]
    assert node_of(prompt, "C2C_LoadCradle2Cane") in executed  # not loaded from disk again
    assert set(_ours(server.loaded_models())) == GROUPS
    assert np.array_equal(_saved(server, prompt, entry), before)


def test_a_workflow_with_a_core_model_loader_runs_beside_ours(server, results):
    """Cradle2Cane's output through a VAE from ComfyUI's own VAELoader (TAESD-XL) in one prompt: both
    models are in ComfyUI's list, and the round trip gives an image."""
    prompt = _age_photo("astronaut_again.jpg")
    aged = node_of(prompt, "C2C_AgePhoto")
    core = {
        "100": {"class_type": "VAELoader", "inputs": {"vae_name": "taesdxl"}},
        "101": {"class_type": "VAEEncode", "inputs": {"pixels": [aged, 0], "vae": ["100", 0]}},
        "102": {"class_type": "VAEDecode", "inputs": {"samples": ["101", 0], "vae": ["100", 0]}},
        "103": {"class_type": "SaveImage", "inputs": {"images": ["102", 0], "filename_prefix": "core_vae"}},
    }
    entry = server.run({**prompt, **core})
    (item,) = entry["outputs"]["103"]["images"]
    assert server.image(item).size == PHOTO_SIZE
    assert _saved(server, prompt, entry).shape == (*PHOTO_SIZE, 3)
    names = {m["name"] for m in server.loaded_models()}
    assert GROUPS | {"TAESD"} <= names, names


GROUP_PATCHER_CHECK = """
import importlib.util, sys, torch
from comfy.cli_args import args
args.cpu = True
import comfy.model_management as mm
root = sys.argv[1]
spec = importlib.util.spec_from_file_location("c2c_pack", root + "/__init__.py", submodule_search_locations=[root])
sys.modules["c2c_pack"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["c2c_pack"])
from c2c_pack.nodes.memory import GroupPatcher, group_class
from comfy.model_patcher import ModelPatcher
for cls in (GroupPatcher, ModelPatcher):
    group = group_class("unet")([torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)])
    patcher = cls(group, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    entry = mm.LoadedModel(patcher)
    entry.model_load(0.1)  # what load_models_gpu asks for under --novram: 0.1 bytes of weights
    novram = patcher.loaded_size()
    unloaded = entry.model_unload(memory_to_free=1)  # free_memory short of one byte
    entry.model_load(1024)  # --lowvram with 1 KiB of room
    print(cls.__name__, patcher.model_size(), novram, unloaded, patcher.loaded_size())
"""


def test_comfyui_moves_a_group_only_whole():
    """ComfyUI's own LoadedModel/ModelPatcher code: where it would load or unload part of a model
    (--lowvram, --novram, a nearly full GPU), a group is loaded or unloaded whole, since our diffusers
    modules cannot compute with some weights left behind. A plain ModelPatcher, for comparison, puts
    none of these weights on the device under --novram."""
    out = subprocess.run([COMFYUI_PYTHON, "-c", GROUP_PATCHER_CHECK, str(ROOT)], cwd=COMFYUI_DIR, check=True,
                         capture_output=True, text=True).stdout.split()
    ours, plain = out[-10:-5], out[-5:]
    size = int(ours[1])
    assert ours == ["GroupPatcher", str(size), str(size), "True", str(size)]
    assert plain[0] == "ModelPatcher" and plain[2] == "0"  # nothing on the device: our modules would fail


# ----------------------------------------------------------------------------- crafted file choices


def _crafted(server, **changes) -> tuple[int, str]:
    prompt = _api("cradle2cane_photo_align_age_paste_back")
    for class_type, (name, value) in changes.items():
        prompt[node_of(prompt, class_type)]["inputs"][name] = value
    return server.request("/prompt", {"prompt": prompt, "client_id": server.client_id})


def test_file_choices_outside_the_model_folders_are_refused_when_queued(server, results):
    """Crafted POST /prompt values naming folders or files outside ComfyUI's model folders are
    refused before anything runs. The answer is the same whether the target exists or not (only the
    value sent comes back), and the server keeps serving."""
    outside = server.base / "elsewhere"
    if not outside.exists():  # a complete Cradle2Cane folder and insightface pack outside every model folder
        outside.mkdir()
        (outside / "Cradle2Cane").symlink_to(server.base / "models" / "cradle2cane" / "Cradle2Cane")
        (outside / "buffalo_l").symlink_to(server.base / "models" / "insightface" / "models" / "buffalo_l")
    loader, align = "C2C_LoadCradle2Cane", "C2C_FaceAlign"
    crafted = [
        (loader, "cradle2cane", "../../../elsewhere/Cradle2Cane"), (loader, "cradle2cane", "../../../nowhere/x"),
        (loader, "cradle2cane", str(outside / "Cradle2Cane")), (loader, "cradle2cane", "/nowhere"),
        (loader, "base", f"diffusers/{server.base / 'models' / 'cradle2cane' / 'sdxl-turbo'}"),
        (loader, "base", "diffusers//nowhere"),
        (loader, "base", "checkpoints/../cradle2cane/sd_xl_turbo_1.0_fp16.safetensors"),
        (align, "detector", "../../../../elsewhere/buffalo_l"), (align, "detector", "../../../../nowhere"),
    ]
    answers = {}
    for class_type, name, value in crafted:
        status, body = _crafted(server, **{class_type: (name, value)})
        assert status == 400, (value, status, body)
        errors = json.loads(body)["node_errors"]
        (node,) = errors.values()
        assert node["class_type"] == class_type
        # one entry per input the node's validate_inputs takes, each "<input> - <message>"
        details = {error["details"].split(" - ", 1)[1] for error in node["errors"]}
        assert len(details) == 1 and "press R" in details.pop(), node["errors"]
        assert name in {error["extra_info"]["input_name"] for error in node["errors"]}
        answers.setdefault((class_type, name), set()).add(body.replace(json.dumps(value)[1:-1], "VALUE"))
        assert str(server.base) not in body.replace(json.dumps(value)[1:-1], "VALUE")
    assert all(len(texts) == 1 for texts in answers.values()), answers  # existing or not: the same answer
    assert server.alive() and not server.get("/queue")["queue_pending"]
