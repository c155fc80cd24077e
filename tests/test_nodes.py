"""The ComfyUI nodes without a ComfyUI: schemas, folders, every node's execute on the tiny set.

These tests run where ComfyUI is not installed, so ``tests/comfy_stubs`` stands in for
``comfy_api.v0_0_2``, ``folder_paths`` and ``comfy.*`` (same signatures, far less behaviour: its
memory manager only records what it is asked to load). The pack is loaded
the way ComfyUI loads it: its root ``__init__.py`` as a package, then ``comfy_entrypoint()``. The
stand-ins are removed from ``sys.modules`` again when this module's tests end.
``tests/test_comfyui_integration.py`` runs the same nodes inside the real server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from node_names import NODE_NAMES

ROOT = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).resolve().parent / "comfy_stubs"
STUB_MODULES = ("comfy_api", "comfy", "folder_paths")
PACK = "c2c_comfy_pack"  # ComfyUI names it after the folder; any name works

SIZE = 128  # the tiny model's resolution


def _drop_modules(prefixes) -> dict:
    gone = {}
    for name in list(sys.modules):
        if name.split(".")[0] in prefixes:
            gone[name] = sys.modules.pop(name)
    return gone


def _lay_out(tiny_models: Path, base: Path) -> None:
    """The tiny set where a ComfyUI user keeps the real files (linked, not copied)."""
    models = base / "models"
    c2c = models / "cradle2cane"
    c2c.mkdir(parents=True)
    for entry in tiny_models.iterdir():
        if entry.name != "insightface":
            (c2c / entry.name).symlink_to(entry)
    (models / "insightface" / "models").mkdir(parents=True)
    (models / "insightface" / "models" / "buffalo_l").symlink_to(tiny_models / "insightface" / "models" / "buffalo_l")
    (models / "checkpoints").mkdir()
    single = tiny_models / "sd_xl_turbo_1.0_fp16.safetensors"
    (models / "checkpoints" / single.name).symlink_to(single)


@pytest.fixture(scope="module")
def comfy(tiny_models, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    _lay_out(Path(tiny_models), base)
    saved = _drop_modules(STUB_MODULES + (PACK,))
    sys.path.insert(0, str(STUBS))
    try:
        import comfy.model_management as mm
        import comfy.utils
        import folder_paths

        folder_paths.use_base_directory(str(base))
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = pack
        spec.loader.exec_module(pack)
        light = not any(name.startswith(f"{PACK}.") for name in sys.modules)
        extension = asyncio.run(pack.comfy_entrypoint())
        classes = asyncio.run(extension.get_node_list())
        yield SimpleNamespace(pack=pack, light=light, extension=extension, classes=classes, base=base, mm=mm,
                              utils=comfy.utils, folder_paths=folder_paths,
                              nodes={cls.GET_SCHEMA().node_id: cls for cls in classes},
                              models=sys.modules[f"{PACK}.nodes.models"], handles=sys.modules[f"{PACK}.nodes.handles"],
                              memory=sys.modules[f"{PACK}.nodes.memory"])
    finally:
        sys.path.remove(str(STUBS))
        _drop_modules(STUB_MODULES + (PACK,))
        sys.modules.update(saved)


def with_defaults(comfy, node_id: str, inputs: dict) -> dict:
    """``inputs`` plus the schema's default for every widget not given, as ComfyUI sends them."""
    schema = comfy.nodes[node_id].GET_SCHEMA()
    defaults = {i.id: i.default if i.default is not None else i.options[0]  # a combo's first option
                for i in schema.inputs if getattr(i, "default", None) is not None or getattr(i, "options", None)}
    return {**defaults, **inputs}


def execute(comfy, node_id: str, **inputs):
    return comfy.nodes[node_id].execute(**with_defaults(comfy, node_id, inputs))


def run(comfy, node_id: str, **inputs):
    return execute(comfy, node_id, **inputs).args


@pytest.fixture(scope="module")
def model(comfy):
    (handle,) = run(comfy, "C2C_LoadCradle2Cane", cradle2cane="Cradle2Cane", precision="fp32", device="cpu")
    return handle


@pytest.fixture(scope="module")
def photo():
    """The shipped example photo as a ComfyUI IMAGE [1,512,512,3]."""
    from PIL import Image

    array = np.asarray(Image.open(ROOT / "assets" / "astronaut.jpg").convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


def _painted(centres, size=90, shape=(240, 400)):
    from cradle2cane.testing.planted_faces import paint_face

    image = np.full((*shape, 3), (40, 60, 90), np.uint8)
    for c in centres:
        paint_face(image, c, size)
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def aligned(comfy, photo):
    images = torch.cat([photo, photo.flip(2)])  # the face, and its mirror image
    crops, faces, _ = run(comfy, "C2C_FaceAlign", image=images, detector="buffalo_l", face="largest", face_index=0,
                          det_size=640, det_thresh=0.5, size=SIZE)
    return crops, faces


# ----------------------------------------------------------------------------- registration and schemas


def test_entry_point_is_v3_only_and_light(comfy):
    assert not hasattr(comfy.pack, "NODE_CLASS_MAPPINGS") and not hasattr(comfy.pack, "NODE_DISPLAY_NAME_MAPPINGS")
    assert comfy.light, "importing the pack's __init__ imported its nodes (it must only register on demand)"
    from comfy_api.v0_0_2 import ComfyExtension

    assert isinstance(comfy.extension, ComfyExtension)


def test_every_node_is_listed_once_with_its_display_name(comfy):
    ids = [cls.GET_SCHEMA().node_id for cls in comfy.classes]
    assert len(ids) == len(set(ids))
    assert {i: comfy.nodes[i].GET_SCHEMA().display_name for i in ids} == NODE_NAMES


@pytest.mark.parametrize("node_id", sorted(NODE_NAMES))
def test_schema_has_descriptions_tooltips_and_known_types(comfy, node_id):
    schema = comfy.nodes[node_id].GET_SCHEMA()
    assert schema.category.split("/")[0] == "cradle2cane" and len(schema.description) > 40
    known = {"IMAGE", "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "C2C_MODEL", "C2C_FACES", "C2C_AGING",
             "C2C_IDENTITY"}
    for item in schema.inputs:
        assert item.tooltip and len(item.tooltip) > 10, f"{node_id}.{item.id} has no tooltip"
        assert item.io_type in known, (node_id, item.id, item.io_type)
        if item.io_type == "COMBO":
            assert item.options and (item.default is None or item.default in item.options), (node_id, item.id)
    for item in schema.outputs:
        assert item.display_name and item.tooltip and item.io_type in known, (node_id, item.id)


def test_handles_are_distinct_custom_types(comfy):
    outputs = {o.io_type for cls in comfy.classes for o in cls.GET_SCHEMA().outputs}
    assert {"C2C_MODEL", "C2C_FACES", "C2C_AGING", "C2C_IDENTITY", "IMAGE"} <= outputs


def test_node_modules_stay_thin(comfy):
    """Adapters only: no model code (forward passes, samplers) in nodes/."""
    for path in (ROOT / "nodes").glob("*.py"):
        text = path.read_text()
        assert "def forward" not in text and "unet(" not in text and "scheduler" not in text, path.name
        assert len(text) < 24_000, f"{path.name} is getting large; split it by idea"


# ----------------------------------------------------------------------------- folders and dropdowns


def test_model_folders_are_added_after_extra_model_paths(comfy):
    fp, models = comfy.folder_paths, comfy.models
    extra = str(comfy.base / "elsewhere")
    saved = {k: (list(v[0]), v[1]) for k, v in fp.folder_names_and_paths.items()}
    try:
        fp.folder_names_and_paths.pop("insightface", None)
        fp.folder_names_and_paths["cradle2cane"] = ([extra], {".safetensors"})  # as extra_model_paths.yaml does
        models.register_folders()
        models.register_folders()  # idempotent
        default = str(comfy.base / "models" / "cradle2cane")
        assert fp.get_folder_paths("cradle2cane") == [extra, default]
        assert fp.get_folder_paths("insightface") == [str(comfy.base / "models" / "insightface")]
    finally:
        fp.folder_names_and_paths.clear()
        fp.folder_names_and_paths.update(saved)


def test_dropdowns_list_what_is_on_disk(comfy):
    models = comfy.models
    assert models.cradle2cane_options()[0] == "Cradle2Cane"
    diffusers = comfy.base / "models" / "diffusers"
    diffusers.mkdir(exist_ok=True)
    (diffusers / "sdxl-turbo").symlink_to(comfy.base / "models" / "cradle2cane" / "sdxl-turbo")
    try:
        assert models.base_options() == ["auto", "checkpoints/sd_xl_turbo_1.0_fp16.safetensors",
                                          "diffusers/sdxl-turbo"]
    finally:
        (diffusers / "sdxl-turbo").unlink()
    assert models.insightface_options() == ["buffalo_l"]
    schema = comfy.nodes["C2C_LoadCradle2Cane"].GET_SCHEMA()
    assert {i.id: i.options for i in schema.inputs}["base"][0] == "auto"


def test_base_choices_resolve_to_the_files(comfy):
    models = comfy.models
    root = comfy.base / "models" / "cradle2cane"
    assert models.resolve_base("auto", root) is None  # the core finds sdxl-turbo/ in the models folder
    single = models.resolve_base("checkpoints/sd_xl_turbo_1.0_fp16.safetensors", root)
    assert single == comfy.base / "models" / "checkpoints" / "sd_xl_turbo_1.0_fp16.safetensors"
    for bad in ("checkpoints/missing.safetensors", "somewhere/else"):
        with pytest.raises(ValueError, match="press R"):
            models.resolve_base(bad, root)


def _outside_copy(comfy) -> Path:
    """A complete Cradle2Cane folder outside every model folder (what a traversal would aim at)."""
    outside = comfy.base / "elsewhere" / "Cradle2Cane"
    if not outside.exists():
        outside.parent.mkdir(exist_ok=True)
        outside.symlink_to((comfy.base / "models" / "cradle2cane" / "Cradle2Cane").resolve())
    return outside


def test_file_choices_outside_the_model_folders_are_refused_alike(comfy):
    """Whatever a crafted prompt names, existing or not, the loader and detector refuse it before any
    path is built, with one message that names no path (only the value that was sent)."""
    outside = _outside_copy(comfy)
    crafted = {
        "cradle2cane": [f"../../{outside.parent.name}/Cradle2Cane", "../../nowhere/Cradle2Cane", str(outside),
                        "/nowhere", "Cradle2Cane/../../elsewhere/Cradle2Cane"],
        "base": [f"diffusers/{outside.parent.parent / 'models' / 'cradle2cane' / 'sdxl-turbo'}",
                 "diffusers//nowhere", "checkpoints/../cradle2cane/sd_xl_turbo_1.0_fp16.safetensors",
                 "checkpoints/../../nowhere.safetensors"],
        "detector": ["../../../../elsewhere/buffalo_l", "../../nowhere", str(comfy.base)],
    }
    loader, align = comfy.nodes["C2C_LoadCradle2Cane"], comfy.nodes["C2C_FaceAlign"]
    messages = set()
    for name, values in crafted.items():
        for value in values:
            node = align if name == "detector" else loader
            refused = node.validate_inputs(**{name: value})
            assert isinstance(refused, str) and "press R" in refused, (name, value, refused)
            messages.add(refused.replace(repr(value), "VALUE"))
            inputs = {"image": torch.zeros(1, 64, 64, 3)} if name == "detector" else {"cradle2cane": "Cradle2Cane"}
            with pytest.raises(ValueError) as error:  # a value that reaches execute (e.g. linked) is refused too
                run(comfy, node.GET_SCHEMA().node_id, **{**inputs, name: value})
            assert str(error.value) == refused
    assert len(messages) == len(crafted), messages  # one text per input: nothing tells existing paths from missing ones
    assert not any(str(comfy.base) in m for m in messages)
    single = "checkpoints/sd_xl_turbo_1.0_fp16.safetensors"
    assert loader.validate_inputs(cradle2cane="Cradle2Cane", base=single) is True
    assert loader.validate_inputs() is True and align.validate_inputs() is True  # linked inputs: checked when run


# ----------------------------------------------------------------------------- loading and memory


def test_loader_hands_four_groups_to_comfyui(comfy, model):
    assert isinstance(model, comfy.handles.ModelHandle) and model.groups.device.type == "cpu"
    assert model.model.dtype == torch.float32 and model.model.offload is model.groups
    patchers = model.groups.patchers
    assert list(patchers) == ["text_encoders", "unet", "vae", "identity"]
    groups = model.model.component_groups()
    for name, patcher in patchers.items():
        assert type(patcher.model).__name__ == f"Cradle2Cane_{name}"
        assert list(patcher.model.parts) == groups[name]  # the pipeline's own modules, not copies
        assert patcher.model_size() == sum(t.nelement() * t.element_size() for m in groups[name]
                                           for t in m.state_dict().values())
    total = sum(p.model_size() for p in patchers.values())
    assert total == sum(t.nelement() * t.element_size() for m in model.model.components().values()
                        for t in m.state_dict().values())  # every weight in exactly one group


@pytest.mark.parametrize("memory", ["default", "model offload", "low-vram"])
def test_a_node_run_asks_comfyui_for_the_groups_it_needs(comfy, aligned, memory):
    from cradle2cane.method.lora import tuner_layers

    crops, _ = aligned
    (handle,) = run(comfy, "C2C_LoadCradle2Cane", cradle2cane="Cradle2Cane", precision="fp32", device="cpu",
                    memory=memory)
    comfy.mm.calls.clear()
    run(comfy, "C2C_AdaNIFirstPass", model=handle, image=crops[:1], target_ages="70", source_age=30, gender="male")
    asked = [(names, room) for kind, names, room in comfy.mm.calls if kind == "load_models_gpu"]
    every = [f"Cradle2Cane_{n}" for n in ("text_encoders", "unet", "vae", "identity")]
    # pass 2 folds the LoRA into a copy of the attention weights: ComfyUI keeps that much free
    folded = sum(layer.get_base_layer().weight.nelement() * layer.get_base_layer().weight.element_size()
                 for layer in tuner_layers(handle.model.pipe.unet))
    if memory == "default":  # all groups together first, so ComfyUI makes room for them in one go
        assert asked[0] == (every, folded) and folded > 0
    else:  # one group at a time, when it runs; never several at once
        assert [names for names, _ in asked][:1] == [["Cradle2Cane_vae"]] and all(len(n) == 1 for n, _ in asked)
        unet = {room for names, room in asked if names == ["Cradle2Cane_unet"]}
        assert unet == {folded if memory == "model offload" else 0}  # low-vram does not fold
    assert {name for names, _ in asked for name in names} >= set(every) - {"Cradle2Cane_identity"}


@pytest.mark.parametrize("state, gigabytes, memory, one_at_a_time", [
    ("NORMAL_VRAM", 24, "default", False), ("HIGH_VRAM", 24, "default", False),
    ("LOW_VRAM", 24, "default", True), ("NO_VRAM", 24, "default", True),  # --lowvram, --novram
    ("NORMAL_VRAM", 0.001, "default", True),  # the groups do not fit at once
    ("HIGH_VRAM", 24, "model offload", True), ("NORMAL_VRAM", 24, "low-vram", True)])
def test_comfyuis_vram_state_and_the_memory_setting_decide_how_many_groups_share_the_device(
        comfy, monkeypatch, state, gigabytes, memory, one_at_a_time):
    monkeypatch.setattr(comfy.mm, "vram_state", comfy.mm.VRAMState[state])
    monkeypatch.setattr(comfy.mm, "get_total_memory", lambda dev=None, torch_total_too=False: gigabytes * 2**30)
    (handle,) = run(comfy, "C2C_LoadCradle2Cane", cradle2cane="Cradle2Cane", precision="fp32", device="cpu",
                    memory=memory)
    assert handle.groups.one_at_a_time is one_at_a_time
    assert handle.model.pipe.vae.use_slicing is (memory == "low-vram")


def test_single_file_base_from_checkpoints_loads(comfy, model):
    (handle,) = run(comfy, "C2C_LoadCradle2Cane", cradle2cane="Cradle2Cane",
                    base="checkpoints/sd_xl_turbo_1.0_fp16.safetensors", precision="fp32", device="cpu")
    assert handle.model is not model.model and handle.model.resolution == SIZE


def test_missing_model_folder_says_where_and_how(comfy, tmp_path, monkeypatch):
    from cradle2cane.loading import paths as W

    empty = tmp_path / "cradle2cane"
    empty.mkdir()
    monkeypatch.setitem(comfy.folder_paths.folder_names_and_paths, "cradle2cane", ([str(empty)], set()))
    with pytest.raises(FileNotFoundError) as error:  # the released name is offered even before the download
        run(comfy, "C2C_LoadCradle2Cane", cradle2cane="Cradle2Cane", device="cpu")
    message = str(error.value)
    assert "pytorch_lora_weights.safetensors" in message and str(empty / "Cradle2Cane") in message
    assert W.source_of(W.C2C_DIR) in message


def test_bad_choices_are_refused(comfy):
    for bad in ({"precision": "fp8"}, {"memory": "swap"}, {"device": "tpu"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            run(comfy, "C2C_LoadCradle2Cane", cradle2cane="Cradle2Cane", **bad)


# ----------------------------------------------------------------------------- faces


def test_face_align_keeps_batch_order_and_estimates(comfy, aligned, photo):
    crops, faces = aligned
    assert crops.shape == (2, SIZE, SIZE, 3) and crops.dtype == torch.float32
    assert 0 <= float(crops.min()) and float(crops.max()) <= 1
    assert faces.photo_index == (0, 1) and faces.photo_count == 2 and len(faces) == 2
    assert all(f.age is not None and f.gender in ("male", "female") for f in faces.faces)
    assert all(f.image.size == 0 for f in faces.faces)  # the handle carries transforms, not pixels
    # The mirrored photo gives the mirrored face (up to interpolation).
    assert torch.allclose(crops[1], crops[0].flip(1), atol=0.2)


def test_face_align_all_faces_left_to_right(comfy):
    image = _painted([(300, 120), (100, 120)])
    crops, faces, _ = run(comfy, "C2C_FaceAlign", image=image, detector="buffalo_l", face="all", face_index=0,
                       det_size=640, det_thresh=0.5, size=64)
    assert crops.shape == (2, 64, 64, 3) and faces.photo_index == (0, 0)
    centres = [f.bbox[0] + f.bbox[2] for f in faces.faces]
    assert centres[0] < centres[1]
    (_, one, _) = run(comfy, "C2C_FaceAlign", image=image, detector="buffalo_l", face="index", face_index=1,
                      det_size=640, det_thresh=0.5, size=64)
    assert np.allclose(one.faces[0].bbox, faces.faces[1].bbox)


def test_no_face_names_the_image_and_what_to_try(comfy, photo):
    images = torch.cat([photo, torch.zeros_like(photo)])
    with pytest.raises(ValueError) as error:
        run(comfy, "C2C_FaceAlign", image=images, detector="buffalo_l", face="largest", face_index=0,
            det_size=640, det_thresh=0.5, size=SIZE)
    message = str(error.value)
    assert message.startswith("Face Align") and "image 1 of the batch" in message and error.value.index == 1
    assert "det_thresh" in message and "AdaNI First Pass" in message and "no_face = skip" in message


def _face_black_face(photo):
    """[face photo, black photo, mirrored face photo]: the middle one has no face."""
    return torch.cat([photo, torch.zeros_like(photo), photo.flip(2)])


ALIGN = dict(detector="buffalo_l", face="largest", face_index=0, det_size=640, det_thresh=0.5, size=SIZE)


@pytest.mark.parametrize("node_id", ["C2C_FaceAlign", "C2C_AgePhoto"])
def test_no_face_is_the_last_input_and_report_the_last_output(comfy, node_id):
    """Last (before only the newer optional reference_inference), so saved workflows keep their widget
    values and links in place."""
    schema = comfy.nodes[node_id].GET_SCHEMA()
    inputs = [i.id for i in schema.inputs]
    assert "reference_inference" not in inputs or inputs[-1] == "reference_inference"
    last = [i for i in schema.inputs if i.id != "reference_inference"][-1]
    assert last.id == "no_face" and last.options == ["error", "skip"] and last.default == "error"
    assert "skip" in last.tooltip and "error" in last.tooltip
    assert [o.io_type for o in schema.outputs][-1] == "STRING" and schema.outputs[-1].id == "report"


def test_face_align_skip_leaves_photos_without_a_face_out_and_reports_them(comfy, photo, aligned, caplog):
    images = _face_black_face(photo)
    with caplog.at_level(logging.WARNING):
        out = execute(comfy, "C2C_FaceAlign", image=images, no_face="skip", **ALIGN)
    crops, faces, report = out.args
    assert faces.photo_index == (0, 2) and faces.skipped == (1,) and faces.photo_count == 3
    assert torch.equal(crops, aligned[0])  # the same crops as without the black photo in between
    assert [f.bbox.tolist() for f in faces.faces] == [f.bbox.tolist() for f in aligned[1].faces]
    lines = report.splitlines()
    assert lines[0] == "Face Align: 2 face(s) in 2 of 3 image(s)" and len(lines) == 2
    assert lines[1].startswith("image 1 skipped") and "no face found in image 1 of the batch" in lines[1]
    assert out.ui.as_dict() == {"text": (report,)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("image 1 of the batch" in w and "Paste Face Back returns it unchanged" in w for w in warnings)
    with pytest.raises(ValueError) as error:  # nothing to align at all: an empty IMAGE batch cannot flow on
        run(comfy, "C2C_FaceAlign", image=images[1:2].expand(2, -1, -1, -1), no_face="skip", **ALIGN)
    assert "no usable face in any of the 2 image(s)" in str(error.value) and "det_thresh" in str(error.value)
    with pytest.raises(ValueError, match="no_face must be one of"):
        run(comfy, "C2C_FaceAlign", image=photo, no_face="ignore", **ALIGN)


def test_missing_face_pack_says_where_to_unzip(comfy, photo, tmp_path, monkeypatch):
    monkeypatch.setitem(comfy.folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path)], set()))
    with pytest.raises(FileNotFoundError, match="buffalo_l.zip"):  # offered before it is downloaded
        run(comfy, "C2C_FaceAlign", image=photo, detector="buffalo_l", size=SIZE)


def test_nodes_load_without_insightface_and_face_nodes_say_what_to_install(comfy, photo, monkeypatch):
    for name in ("insightface", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    classes = asyncio.run(comfy.extension.get_node_list())
    assert len(classes) == len(NODE_NAMES)
    face_module = sys.modules[f"{PACK}.cradle2cane.faces.packs"]
    face_module.clear_detector_cache()
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        run(comfy, "C2C_FaceAlign", image=photo, detector="buffalo_l", face="largest", face_index=0,
            det_size=640, det_thresh=0.5, size=SIZE)


# ----------------------------------------------------------------------------- the two passes


def _chain(comfy, model, crops, faces, ages="30, 70", seed=5):
    aged, aging = run(comfy, "C2C_AdaNIFirstPass", model=model, image=crops, target_ages=ages, source_age=-1,
                      gender="auto", faces=faces, seed=seed, strength=0.0)
    (identity,) = run(comfy, "C2C_IdentityEmbed", model=model, source=crops, aged=aged, aging=aging,
                      svr="model default", clip_rotation="model default", swr_alpha=-1.0, swr_beta=-1.0)
    (final,) = run(comfy, "C2C_IdentitySecondPass", model=model, aged=aged, identity=identity, aging=aging,
                   seed=-1, id_strength=0.0)
    return aged, aging, identity, final


def test_five_nodes_equal_the_core_call(comfy, model, aligned):
    crops, faces = aligned
    aged, aging, identity, final = _chain(comfy, model, crops, faces)
    assert aged.shape == final.shape == (4, SIZE, SIZE, 3)  # 2 faces x 2 ages, face by face
    assert aging.first.target_ages == [30, 70, 30, 70] and aging.first.source_index == [0, 0, 1, 1]
    assert identity.conditioning.shape[:2] == (4, 2) and identity.conditioning.device.type == "cpu"
    ages = [f.age for f in faces.faces]
    genders = [f.gender for f in faces.faces]
    expected = model.model(crops.permute(0, 3, 1, 2), [30, 70], ages, genders, seed=5)
    # Equal up to float32 noise (the memory layout of the input changes the convolutions' summation order).
    assert torch.allclose(final, expected.images.permute(0, 2, 3, 1), atol=1e-5)
    assert torch.allclose(aged, expected.aged.permute(0, 2, 3, 1), atol=1e-5)


def test_sweep_equals_the_five_nodes(comfy, model, aligned):
    crops, faces = aligned
    images, labels = run(comfy, "C2C_LifespanSweep", model=model, image=crops, start_age=70, end_age=30, step=40,
                         ages="", source_age=-1, gender="auto", faces=faces, seed=5, id_strength=0.0)
    assert labels == "70, 30" and images.shape == (4, SIZE, SIZE, 3)
    final = _chain(comfy, model, crops, faces, ages="70, 30")[3]
    assert torch.allclose(images, final, atol=1e-5)  # float32 noise: CLIP texts batch differently
    images, labels = run(comfy, "C2C_LifespanSweep", model=model, image=crops[:1], start_age=0, end_age=0, step=1,
                         ages="10-30:10", source_age=40, gender="female", faces=None, seed=0, id_strength=0.0)
    assert labels == "10, 20, 30" and images.shape[0] == 3


def test_given_source_age_and_gender_need_no_faces(comfy, model, aligned):
    crops, _ = aligned
    aged, aging = run(comfy, "C2C_AdaNIFirstPass", model=model, image=crops[:1], target_ages="45", source_age=40,
                      gender="male", faces=None, seed=0, strength=0.75)
    assert aging.first.source_ages == [40] and aging.first.genders == ["male"] and aging.first.strengths == [0.75]
    with pytest.raises(ValueError, match="connect it, or set source_age and gender"):
        run(comfy, "C2C_AdaNIFirstPass", model=model, image=crops, target_ages="45", source_age=-1,
            gender="male", faces=None, seed=0, strength=0.0)


def test_reference_inference_option_reaches_the_core(comfy, model, aligned):
    crops, _ = aligned
    options = dict(model=model, image=crops[:1], target_ages="70", source_age=30, gender="female", faces=None, seed=0,
                   strength=0.0)
    aged, aging = run(comfy, "C2C_AdaNIFirstPass", **options, reference_inference=True)
    assert aging.first.plan.reference_inference and torch.equal(aged * 255, (aged * 255).round())  # 8-bit aged
    assert not run(comfy, "C2C_AdaNIFirstPass", **options)[1].first.plan.reference_inference  # off by default


def test_identity_options_reach_the_core(comfy, model, aligned):
    crops, faces = aligned
    aged, aging = run(comfy, "C2C_AdaNIFirstPass", model=model, image=crops[:1], target_ages="70", source_age=30,
                      gender="female", faces=None, seed=0, strength=0.0)
    embed = lambda **o: run(comfy, "C2C_IdentityEmbed", model=model, source=crops[:1], aged=aged, aging=aging,  # noqa: E731
                            **{"svr": "model default", "clip_rotation": "model default", "swr_alpha": -1.0,
                               "swr_beta": -1.0, **o})[0].conditioning
    default = embed()
    assert torch.equal(default, embed(svr="on", clip_rotation="angle", swr_alpha=0.01, swr_beta=1.1))
    assert not torch.equal(default[:, 0], embed(svr="off")[:, 0])
    assert not torch.equal(default[:, 1], embed(clip_rotation="vector")[:, 1])


@pytest.mark.parametrize("text, ages", [("70", [70]), ("20, 40;60", [20, 40, 60]), ("10-30:10", [10, 20, 30]),
                                        ("10 - 20 : 5, 0", [10, 15, 20, 0]), ("80-60:10", [80, 70, 60])])
def test_age_lists(comfy, text, ages):
    layout = sys.modules[f"{PACK}.nodes.layout"]
    assert layout.parse_ages(text, "AdaNI First Pass") == ages


@pytest.mark.parametrize("text, words", [("120", ["120", "0 and 100"]), ("-5", ["-5"]), ("7.5", ["whole"]),
                                         ("old", ["'old'", "e.g."]), ("", ["empty"])])
def test_bad_ages_say_what_and_how(comfy, model, aligned, text, words):
    with pytest.raises(ValueError) as error:
        run(comfy, "C2C_AdaNIFirstPass", model=model, image=aligned[0], target_ages=text, source_age=-1,
            gender="auto", faces=aligned[1], seed=0, strength=0.0)
    assert str(error.value).startswith("AdaNI First Pass")
    for word in words:
        assert word in str(error.value)


def test_wrong_handles_say_which_socket_to_connect(comfy, model, aligned):
    crops, faces = aligned
    aged, aging, identity, _ = _chain(comfy, model, crops[:1], type(faces)(faces.faces[:1], (0,), 1), ages="60")
    with pytest.raises(TypeError, match="needs a C2C_MODEL handle, got C2C_FACES.*'Load Cradle2Cane'"):
        run(comfy, "C2C_AdaNIFirstPass", model=faces, image=crops, target_ages="70", source_age=-1, gender="auto",
            faces=faces, seed=0, strength=0.0)
    with pytest.raises(TypeError, match="'aging' needs a C2C_AGING handle, got C2C_IDENTITY"):
        run(comfy, "C2C_IdentitySecondPass", model=model, aged=aged, identity=identity, aging=identity, seed=-1,
            id_strength=0.0)
    with pytest.raises(TypeError, match="'faces' needs a C2C_FACES handle, got C2C_AGING"):
        run(comfy, "C2C_PasteFaceBack", image=crops, faces=aging, aged=aged)
    other_aged, other_aging = run(comfy, "C2C_AdaNIFirstPass", model=model, image=crops, target_ages="20",
                                  source_age=30, gender="male", faces=None, seed=0, strength=0.0)
    with pytest.raises(ValueError, match="another pass-1 run"):
        run(comfy, "C2C_IdentitySecondPass", model=model, aged=other_aged, identity=identity, aging=other_aging,
            seed=-1, id_strength=0.0)
    with pytest.raises(ValueError, match="same Face Align"):
        run(comfy, "C2C_AdaNIFirstPass", model=model, image=crops[:1], target_ages="70", source_age=-1,
            gender="auto", faces=faces, seed=0, strength=0.0)
    with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
        run(comfy, "C2C_AdaNIFirstPass", model=model, image=crops[0], target_ages="70", source_age=30,
            gender="male", faces=None, seed=0, strength=0.0)


# ----------------------------------------------------------------------------- paste back and all-in-one


def test_paste_back_gives_one_photo_per_age_and_keeps_the_background(comfy, model, photo, aligned):
    crops, faces = aligned
    photos = torch.cat([photo, photo.flip(2)])
    final = _chain(comfy, model, crops, faces)[3]
    (out,) = run(comfy, "C2C_PasteFaceBack", image=photos, faces=faces, aged=final, feather=0.1, mask_scale=0.9,
                 color_match="mean")
    assert out.shape == (4, 512, 512, 3)  # photo 0 at 30 and 70, photo 1 at 30 and 70
    for i in range(4):
        source = photos[i // 2]
        assert torch.equal(out[i, :40, :40], source[:40, :40])  # far from the face: untouched
        assert (out[i] - source).abs().mean() > 1e-3  # the face changed
    assert not torch.equal(out[0], out[1])
    with pytest.raises(ValueError, match="same images that went into Face Align"):
        run(comfy, "C2C_PasteFaceBack", image=photo, faces=faces, aged=final)
    with pytest.raises(ValueError, match="faces x ages"):
        run(comfy, "C2C_PasteFaceBack", image=photos, faces=faces, aged=final[:3])


def test_age_photo_equals_the_node_chain(comfy, model, photo, aligned):
    crops, faces, _ = run(comfy, "C2C_FaceAlign", image=photo, detector="buffalo_l", face="largest", face_index=0,
                          det_size=640, det_thresh=0.5, size=SIZE)
    final = _chain(comfy, model, crops, faces, ages="25, 75", seed=9)[3]
    (chain,) = run(comfy, "C2C_PasteFaceBack", image=photo, faces=faces, aged=final, feather=0.1, mask_scale=0.9,
                   color_match="mean")
    allinone, report = run(comfy, "C2C_AgePhoto", model=model, image=photo, target_ages="25, 75", source_age=-1,
                           gender="auto", seed=9, detector="buffalo_l", face="largest", face_index=0, det_size=640,
                           det_thresh=0.5, strength=0.0, id_strength=0.0, feather=0.1, mask_scale=0.9,
                           color_match="mean", no_face="error")
    assert report == "Cradle2Cane Age Photo: aged the face(s) of 1 of 1 image(s) to 25, 75"
    assert allinone.shape == (2, 512, 512, 3)
    # Two code paths (five nodes vs one call) batch the same float32 work differently, and CPU
    # kernels round differently per shape: up to ~3e-6 here, the same in any order or alone.
    # 1e-5 is far above that rounding and far below one 8-bit level (3.9e-3).
    assert torch.allclose(allinone, chain, atol=1e-5)


def test_skipped_photo_comes_back_unchanged_from_paste_face_back(comfy, model, photo, aligned):
    images = _face_black_face(photo)
    crops, faces, _ = run(comfy, "C2C_FaceAlign", image=images, no_face="skip", **ALIGN)
    final = _chain(comfy, model, crops, faces)[3]  # the aging nodes see 2 faces; the black photo is not there
    assert final.shape == (4, SIZE, SIZE, 3)
    (out,) = run(comfy, "C2C_PasteFaceBack", image=images, faces=faces, aged=final, feather=0.1, mask_scale=0.9,
                 color_match="mean")
    assert out.shape == (6, 512, 512, 3)  # 3 photos x 2 ages, photo by photo
    assert torch.equal(out[2], images[1]) and torch.equal(out[3], images[1])  # the black photo, at both ages
    (without,) = run(comfy, "C2C_PasteFaceBack", image=images[[0, 2]], faces=aligned[1], aged=final, feather=0.1,
                     mask_scale=0.9, color_match="mean")
    assert torch.equal(out[[0, 1, 4, 5]], without)  # the others in order, as if the black one were not there


def test_age_photo_skip_returns_a_photo_without_a_face_unchanged_at_every_age(comfy, model, photo, caplog):
    images = _face_black_face(photo)
    settings = dict(model=model, target_ages="25, 75", source_age=-1, gender="auto", seed=9, strength=0.0,
                    id_strength=0.0, feather=0.1, mask_scale=0.9, color_match="mean", **ALIGN)
    settings.pop("size")
    with caplog.at_level(logging.WARNING):
        out = execute(comfy, "C2C_AgePhoto", image=images, no_face="skip", **settings)
    result, report = out.args
    assert result.shape == (6, 512, 512, 3)  # photos x ages, photo by photo
    assert torch.equal(result[2], images[1]) and torch.equal(result[3], images[1])
    alone, _ = run(comfy, "C2C_AgePhoto", image=photo, no_face="skip", **settings)
    assert torch.allclose(result[:2], alone, atol=1e-6)  # photo 0 aged as on its own
    assert torch.equal(result[4:, :40, :40], images[2:, :40, :40].expand(2, -1, -1, -1))  # photo 2, in place
    assert (result[4:] - images[2]).abs().mean() > 1e-3
    lines = report.splitlines()
    assert lines[0] == "Cradle2Cane Age Photo: aged the face(s) of 2 of 3 image(s) to 25, 75" and len(lines) == 2
    assert lines[1].startswith("image 1 skipped") and "image 1 of the batch" in lines[1]
    assert out.ui.as_dict() == {"text": (report,)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("image 1 of the batch" in w and "unchanged" in w for w in warnings)
    black, report = run(comfy, "C2C_AgePhoto", image=images[1:2], no_face="skip", **settings)
    assert torch.equal(black, images[1:2].expand(2, -1, -1, -1)) and "image 0 skipped" in report


def test_age_photo_no_face_error_names_the_image_and_the_settings(comfy, model, photo, monkeypatch):
    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        updates.append((value, total)))
    with pytest.raises(ValueError) as error:
        run(comfy, "C2C_AgePhoto", model=model, image=torch.cat([photo, torch.zeros_like(photo)]), target_ages="70",
            seed=0, no_face="error")
    assert updates == []  # every photo is checked for a face before any of them is aged
    message = str(error.value)
    assert "no face found in Cradle2Cane Age Photo: image 1 of the batch" in message and error.value.index == 1
    assert "det_thresh=0.5" in message and "det_size=640" in message and "no_face = skip" in message


# ----------------------------------------------------------------------------- progress and cancel


def test_progress_bar_follows_the_unet_steps(comfy, model, aligned, monkeypatch):
    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        updates.append((value, total)))
    crops, faces = aligned
    run(comfy, "C2C_LifespanSweep", model=model, image=crops[:1], start_age=20, end_age=80, step=60, ages="",
        source_age=20, gender="male", faces=None, seed=0, id_strength=0.0)
    # ages 20 (gap 0: 1 step) and 80 (gap 60: 3 steps) in pass 1, one UNet call per step carrying
    # both at the last step, then one identity step for the batch
    assert updates == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("node_id", ["C2C_AdaNIFirstPass", "C2C_LifespanSweep", "C2C_AgePhoto"])
def test_cancel_stops_within_a_step_and_restores_the_lora(comfy, model, aligned, photo, node_id, monkeypatch):
    from cradle2cane.method.lora import lora_is_enabled

    crops, faces = aligned
    calls = {
        "C2C_AdaNIFirstPass": dict(model=model, image=crops, target_ages="90", source_age=-1, gender="auto",
                                   faces=faces, seed=0, strength=0.0),
        "C2C_LifespanSweep": dict(model=model, image=crops, start_age=90, end_age=90, step=1, ages="",
                                  source_age=-1, gender="auto", faces=faces, seed=0, id_strength=0.0),
        "C2C_AgePhoto": dict(model=model, image=photo, target_ages="90", seed=0),
    }
    steps = []

    def cancel_after_first_step(value, total, preview, node_id=None):
        steps.append(value)
        comfy.mm.interrupt_current_processing()  # the user presses Cancel during step 1

    unet = model.model.pipe.unet
    assert lora_is_enabled(unet)
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", cancel_after_first_step)
    with pytest.raises(comfy.mm.InterruptProcessingException):
        run(comfy, node_id, **calls[node_id])
    assert steps == [1]  # the next step's callback stopped it
    assert lora_is_enabled(unet)  # pass 1 had switched it off
    assert not comfy.mm.processing_interrupted()
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", None)
    first = run(comfy, node_id, **calls[node_id])[0]
    again = run(comfy, node_id, **calls[node_id])[0]
    assert torch.equal(first, again)


# ----------------------------------------------------------------------------- shipped files


def _workflow_names():
    return sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


def test_every_ui_workflow_has_an_api_twin():
    api = sorted(p.stem for p in (ROOT / "workflows" / "api").glob("*.json"))
    assert api == _workflow_names() and len(api) >= 4


@pytest.mark.parametrize("name", _workflow_names())
def test_ui_workflow_links_are_consistent(name):
    """Every link is recorded at both ends. (That the API twin is what the frontend queues for the
    graph is checked by the frontend itself, in tests/test_comfyui_browser.py.)"""
    graph = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    links = {link[0]: link for link in graph["links"]}
    for node in graph["nodes"]:
        for slot, entry in enumerate(node.get("inputs", [])):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                assert link[3] == node["id"] and link[4] == slot and link[5] == entry["type"]
        for slot, out in enumerate(node.get("outputs", [])):
            for link_id in out.get("links") or []:
                assert links[link_id][1] == node["id"] and links[link_id][2] == slot
    assert graph["last_node_id"] == max(n["id"] for n in graph["nodes"])
    assert graph["last_link_id"] == max(links, default=0)
    assert (ROOT / "workflows" / f"{name}.jpg").is_file()  # the template browser's thumbnail


def test_workflows_cover_the_use_cases():
    uses = {name: {n["class_type"] for n in json.loads(
        (ROOT / "workflows" / "api" / f"{name}.json").read_text()).values()} for name in _workflow_names()}
    five = {"C2C_LoadCradle2Cane", "C2C_FaceAlign", "C2C_AdaNIFirstPass", "C2C_IdentityEmbed",
            "C2C_IdentitySecondPass"}
    assert any(five <= used and "C2C_PasteFaceBack" not in used for used in uses.values())
    assert any(five | {"C2C_PasteFaceBack"} <= used for used in uses.values())
    assert any({"C2C_LifespanSweep", "SaveAnimatedWEBP"} <= used for used in uses.values())
    assert set().union(*uses.values()) >= set(NODE_NAMES)
    for used in uses.values():
        loads = [n for n in used if n == "LoadImage"]
        assert loads
    for name in _workflow_names():
        api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
        images = [n["inputs"]["image"] for n in api.values() if n["class_type"] == "LoadImage"]
        assert all((ROOT / "assets" / image).is_file() for image in images), images


def test_example_image_is_small_and_shows_a_face(tiny_models):
    from PIL import Image

    from cradle2cane.faces.detect import FaceDetector
    from cradle2cane.faces.packs import find_insightface_pack

    path = ROOT / "assets" / "astronaut.jpg"
    assert path.stat().st_size < 150_000
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (512, 512, 3)
    assert FaceDetector(find_insightface_pack(tiny_models)).find(image)


def test_requirements_txt_equals_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == project["project"]["dependencies"]


def test_registry_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"].startswith(">=")
    icon = comfy["Icon"]
    assert icon.startswith("https://") and (ROOT / "assets" / icon.rsplit("/", 1)[-1]).is_file()
    assert project["project"]["urls"]["Repository"].startswith("https://")


def test_ci_runs_the_readme_install_and_test_commands():
    """.ci/run installs and tests exactly as the README tells users to. (The README's "Install" shows
    one line per kind of machine, CPU or NVIDIA GPU; "Run the tests" is the sequence CI runs.)"""
    import re

    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for section in ("Run the tests",):
        body = readme.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
        (block,) = re.findall(r"```sh\n(.*?)```", body, re.S)[:1]
        for line in filter(None, block.splitlines()):
            assert line in ci, f"README '{section}' runs {line!r}; .ci/run does not"
