"""Damaged, incomplete and hostile model files: each is refused with one line that names the file,
before any image work, and checks that need no weights run before any model is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cradle2cane import Cradle2Cane, SettingsError
from cradle2cane.loading import paths as W
from cradle2cane.loading.paths import ModelFileError, one_line
from cradle2cane.loading.state_dicts import nonfinite
from cradle2cane.testing.tiny import write_hparams

LORA = Path(W.C2C_DIR) / W.LORA_FILE


def _models(tiny_models: Path, tmp_path: Path, *copied: str) -> Path:
    """A models folder whose ``copied`` entries are private copies (to be damaged) and whose other
    entries link to the shared tiny set (which tests must not change)."""
    root = tmp_path / "models"
    root.mkdir()
    for entry in tiny_models.iterdir():
        if entry.name in copied:
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry)
    return root


def _rewrite_safetensors(path: Path, change) -> None:
    """Rewrite a safetensors file with ``change(state) -> state``, keeping its metadata."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(change(load_file(str(path))), str(path), metadata=metadata)


def _load(models: Path) -> Cradle2Cane:
    return Cradle2Cane.from_pretrained(models, device="cpu", dtype=torch.float32)


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a model starts loading: the error must come before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr("cradle2cane.pipeline.load_clip", refuse)


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path, *words: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return message


# ----------------------------------------------------------------------------- the LoRA


def test_nan_lora_is_refused_with_counts(tiny_models, tmp_path):
    models = _models(tiny_models, tmp_path, W.C2C_DIR)
    _rewrite_safetensors(models / LORA, lambda s: {k: torch.full_like(v, float("nan")) if i % 2 else v
                                                   for i, (k, v) in enumerate(sorted(s.items()))})
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, models / LORA, "32 of 64 weight tensors hold NaN or infinite values")


def test_lora_with_half_its_tensors_missing_is_refused_with_counts(tiny_models, tmp_path):
    models = _models(tiny_models, tmp_path, W.C2C_DIR)
    _rewrite_safetensors(models / LORA, lambda s: dict(sorted(s.items())[::2]))
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, models / LORA, "32 of 64 LoRA tensors missing", "lora.up.weight")


def test_lora_missing_whole_layers_is_refused(tiny_models, tmp_path):
    """Both halves of every to_v gone: the adapter metadata still targets to_v."""
    models = _models(tiny_models, tmp_path, W.C2C_DIR)
    _rewrite_safetensors(models / LORA, lambda s: {k: v for k, v in s.items() if ".to_v." not in k})
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, models / LORA, "16 of 64 LoRA tensors missing", "to_v")


def test_lora_keys_for_no_unet_layer_and_text_encoder_keys_are_counted(tiny_models, tmp_path):
    models = _models(tiny_models, tmp_path, W.C2C_DIR)

    def add_foreign(state):
        state["unet.mid_block.nowhere.to_q.lora.down.weight"] = torch.zeros(4, 8)
        state["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight"] = torch.zeros(4, 32)
        return state

    _rewrite_safetensors(models / LORA, add_foreign)
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, models / LORA, "2 keys that no UNet layer takes")


def test_lora_shape_mismatch_is_one_line_not_a_page(tiny_models, tmp_path):
    models = _models(tiny_models, tmp_path, W.C2C_DIR)
    _rewrite_safetensors(models / LORA, lambda s: {k: torch.zeros(v.shape[0], v.shape[1] + 1) if "down" in k else v
                                                   for k, v in s.items()})
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, models / LORA, "32 layers with the wrong shape", "do not fit a")


def test_cli_prints_one_line_for_a_broken_lora(tiny_models, tmp_path, capsys):
    from cradle2cane.tools.cli import main

    models = _models(tiny_models, tmp_path, W.C2C_DIR)
    _rewrite_safetensors(models / LORA, lambda s: {k: torch.zeros(v.shape[0], v.shape[1] + 1) if "down" in k else v
                                                   for k, v in s.items()})
    face = tmp_path / "face.png"
    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(face)
    code = main(["age", str(face), "--aligned", "--models", str(models), "--target-age", "70", "--source-age", "30",
                 "--gender", "male", "--out", str(tmp_path / "out.png"), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and str(models / LORA) in err, err
    assert not (tmp_path / "out.png").exists()


# ----------------------------------------------------------------------------- damaged files, before loading


@pytest.mark.parametrize("relative, cut", [
    (f"{W.CLIP_DIR}/model.safetensors", 1000),
    (f"{W.BASE_DIR}/unet/diffusion_pytorch_model.safetensors", 3000),
    (f"{W.BASE_DIR}/text_encoder/model.safetensors", 500),
    (f"{W.C2C_DIR}/{W.LORA_FILE}", 3000),
    (W.ARCFACE_FILE, 5000),
    (f"{W.C2C_DIR}/face_project.bin", 5000),
])
def test_truncated_weight_file_is_named_before_anything_loads(tiny_models, tmp_path, nothing_loads, relative, cut):
    models = _models(tiny_models, tmp_path, relative.split("/")[0])
    path = models / relative
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, path, "interrupted download")


def test_truncated_single_file_base_is_named(tiny_models, tmp_path, nothing_loads):
    models = _models(tiny_models, tmp_path, W.BASE_SINGLE_FILES[0])
    path = models / W.BASE_SINGLE_FILES[0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError) as exc:
        Cradle2Cane.from_pretrained(models, base=path, device="cpu", dtype=torch.float32)
    _one_line_naming(exc, path, "file not fully covered")


def test_garbage_pickle_is_named_and_never_executed(tiny_models, tmp_path):
    """Not a torch archive at all (so the quick check cannot judge it): the weights-only read names it."""
    models = _models(tiny_models, tmp_path, W.C2C_DIR)
    path = models / W.C2C_DIR / "clip_project.bin"
    path.write_bytes(b"\x80\x04garbage that is not a pickle" * 10)
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, path, "weights-only")


# ----------------------------------------------------------------------------- NaN/Inf anywhere


def test_nan_projector_is_refused(tiny_models, tmp_path):
    models = _models(tiny_models, tmp_path, W.C2C_DIR)
    path = models / W.C2C_DIR / "face_project.bin"
    state = torch.load(path, weights_only=True)
    state["fc_out.weight"][0, 0] = float("inf")
    torch.save(state, path)
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, path, "1 of", "fc_out.weight")


def test_nan_in_the_base_unet_is_refused(tiny_models, tmp_path):
    models = _models(tiny_models, tmp_path, W.BASE_DIR)
    path = models / W.BASE_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    _rewrite_safetensors(path, lambda s: {k: v.clone().fill_(float("nan")) if k == "conv_in.weight" else v
                                          for k, v in s.items()})
    with pytest.raises(ModelFileError) as exc:
        _load(models)
    _one_line_naming(exc, path.parent, "conv_in.weight")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_finds_every_kind_in_every_float_dtype(dtype, bad):
    good = torch.linspace(-3, 3, 1000).to(dtype)
    broken = good.clone()
    broken[517] = bad
    counts = torch.arange(5)  # integer buffers (num_batches_tracked) are not weights
    assert nonfinite([("good", good), ("counts", counts)]) == ([], 1)
    assert nonfinite([("good", good), ("broken", broken), ("counts", counts)]) == (["broken"], 2)


# ----------------------------------------------------------------------------- settings, before loading


@pytest.mark.parametrize("key, value, words", [
    ("swr_alpha", float("inf"), "swr_alpha must be"),
    ("swr_beta", float("nan"), "swr_beta must be"),
    ("infer_step", 100000, "infer_step must be"),
    ("resolution", 1000000, "resolution must be"),
    ("id_strength", 2.0, "id_strength must be"),
    ("t1", -5, "t1 must be"),
])
def test_out_of_range_hparams_are_refused_before_loading(tiny_models, tmp_path, nothing_loads, key, value, words):
    models = _models(tiny_models, tmp_path, W.C2C_DIR)
    write_hparams(models / W.C2C_DIR / W.HPARAMS_FILE, **{key: value})
    with pytest.raises(SettingsError) as exc:
        _load(models)
    _one_line_naming(exc, models / W.C2C_DIR / W.HPARAMS_FILE, words)


# ----------------------------------------------------------------------------- the face detector pack


def test_corrupt_onnx_model_is_named(tiny_models, tmp_path):
    pytest.importorskip("insightface")
    pytest.importorskip("onnxruntime")
    from cradle2cane.faces.detect import FaceDetector
    from cradle2cane.faces.packs import clear_detector_cache

    pack = tmp_path / "buffalo_l"
    shutil.copytree(tiny_models / "insightface" / "models" / "buffalo_l", pack)
    detector = next(p for p in sorted(pack.glob("*.onnx")) if p.name.startswith("det"))
    detector.write_bytes(detector.read_bytes()[: detector.stat().st_size // 2])
    clear_detector_cache()
    with pytest.raises(ValueError) as exc:
        FaceDetector(pack).detect(np.zeros((256, 256, 3), np.uint8))
    _one_line_naming(exc, detector, "not a readable ONNX model")


# ----------------------------------------------------------------------------- library messages


def test_one_line_keeps_the_first_useful_line():
    many = RuntimeError("Error(s) in loading state_dict for UNet:\n\tsize mismatch for a: x\n\tsize mismatch for b: y")
    assert one_line(many) == "Error(s) in loading state_dict for UNet: size mismatch for a: x (+1 more lines)"
    assert one_line(ValueError("x" * 1000)).endswith("x ...") and len(one_line(ValueError("x" * 1000))) < 310
    assert one_line(KeyError()) == "KeyError"


def test_command_line_prints_a_multi_line_library_error_as_one_line(monkeypatch, capsys):
    from cradle2cane.training.__main__ import main as training_main

    def page_of_errors(*args, **kwargs):
        raise RuntimeError("Error(s) in loading state_dict for UNet:\n" + "\n".join(
            f"\tsize mismatch for layer{i}.weight: copying a param with shape [4, 65]" for i in range(131)))

    monkeypatch.setattr("cradle2cane.training.config.build_config", page_of_errors)
    assert training_main(["config"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("training config: error: Error(s) in loading state_dict")
    assert "layer0.weight" in err and "layer130" not in err  # the first useful line, not the page
