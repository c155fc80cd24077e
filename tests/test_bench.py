"""``cradle2cane bench`` and the precision / memory options it measures (tiny models, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cradle2cane.runtime import diagnostics as D
from cradle2cane.runtime import offload as M
from cradle2cane.runtime import precision as P
from cradle2cane.tools.bench import spread_ages
from cradle2cane.tools.cli import main
from cradle2cane.method.adani import unet_evaluations

FACE_SEED = 5


def _bench(*argv: str) -> int:
    return main(["bench", "--repeats", "1", "--warmup", "0", "--threads", str(torch.get_num_threads()), *argv])


# ----------------------------------------------------------------------------- the command


def test_bench_writes_a_valid_json_report(tiny_models, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert _bench("--models", str(tiny_models), "--ages", "3", "--json", str(out)) == 0
    table = capsys.readouterr().out
    assert "sequential" in table and "sweep" in table and "speed-up" in table

    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["version"] == 1
    assert report["ages"] == spread_ages(3) == [1, 40, 80]
    assert report["device"] == "cpu" and report["dtype"] == "fp32" and report["resolution"] == 128
    assert report["torch_threads"] == torch.get_num_threads()
    assert set(report["variants"]) == {"sequential", "sweep"}
    for name, v in report["variants"].items():
        assert v["images"] == 3 and len(v["times_s"]) == 1 and v["seconds_median"] > 0
        assert v["per_image_s_median"] == pytest.approx(v["seconds_median"] / 3)
        assert v["peak_mib"] > 0 and v["peak_kind"].startswith("process_peak_rss")
    assert report["process_peak_rss_mib"] >= max(v["peak_mib"] for v in report["variants"].values())
    seq, sweep = report["variants"]["sequential"], report["variants"]["sweep"]
    speedup = seq["per_image_s_median"] / sweep["per_image_s_median"]
    assert report["speedup_sequential_over_sweep"] == pytest.approx(speedup)

    # Same work in the UNet, fewer calls; the reference re-encodes what the sweep shares.
    steps = 4
    rows = sum(unet_evaluations(0.25 if abs(a - 30) <= 10 else 0.5 if abs(a - 30) <= 30 else 0.75, steps) + 1
               for a in report["ages"])
    assert seq["rows"]["unet"] == sweep["rows"]["unet"] == rows
    assert seq["calls"]["unet"] == rows and sweep["calls"]["unet"] < rows
    assert seq["rows"]["vae_encoder"] == 2 * 3 and sweep["calls"]["vae_encoder"] == 2
    assert seq["rows"]["text_encoder"] == 2 * 3 and sweep["rows"]["text_encoder"] == 3
    assert sweep["rows"]["clip_vision"] == 1 and seq["rows"]["clip_vision"] == 3

    # Plain diffusers calls and the batched sweep give the same images.
    diff = report["max_abs_diff"]["sweep_vs_sequential"]
    assert diff["final"] < 1e-3 and diff["aged"] < 1e-3
    assert report["attention"]["all_sdpa"] is True
    assert report["component_dtypes"]["unet"] == "fp32"


def test_bench_default_tiny_set_offload_and_json_on_stdout(capsys):
    """No --models: the tiny set goes to a temporary folder; '--json -' keeps stdout pure JSON."""
    assert _bench("--age-list", "20,70", "--variants", "sweep,single", "--memory", "default,offload,low-vram",
                  "--json", "-") == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "speed-up" not in captured.out and "sweep+offload" in captured.err
    assert report["models"].startswith("tiny")
    assert report["ages"] == [20, 70] and report["speedup_sequential_over_sweep"] is None
    assert list(report["variants"]) == ["sweep", "single", "sweep+offload", "single+offload",
                                        "sweep+low-vram", "single+low-vram"]
    assert report["variants"]["single"]["images"] == 1
    diffs = report["max_abs_diff"]
    assert diffs["sweep+offload_vs_sweep"]["final"] == 0.0  # offload on the CPU changes nothing
    assert diffs["sweep+low-vram_vs_sweep"]["final"] < 1e-4  # VAE slicing: float rounding only
    assert diffs["single_vs_sweep"]["final"] < 1e-4
    assert diffs["single+offload_vs_single"]["final"] == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--ages", "0"], "--ages must be between 1 and 80"),
    (["--ages", "81"], "--ages must be between 1 and 80"),
    (["--ages", "3", "--age-list", "10"], "either --ages"),
    (["--age-list", "10,abc"], "comma-separated whole ages"),
    (["--age-list", "120"], "between 0 and 100"),
    (["--source-age", "-3"], "--source-age"),
    (["--gender", "robot"], "--gender must be 'male' or 'female'"),
    (["--variants", "fast"], "choose from sequential, sweep, single"),
    (["--memory", "offload"], "add default to --memory"),
    (["--memory", "tiny"], "choose from default, offload, low-vram"),
    (["--full-size", "--models", "somewhere"], "cannot be combined with --models"),
    (["--base", "x.safetensors"], "--base needs --models"),
    (["--json", "/nonexistent-folder/bench.json"], "does not exist"),
])
def test_bench_rejects_bad_arguments(argv, message, capsys):
    assert main(["bench", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cradle2cane bench: error:") and message in err


def test_bench_json_into_a_folder_is_refused(tmp_path, capsys):
    assert main(["bench", "--json", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_full_size_without_a_gpu_says_how_to_force_it(capsys):
    assert main(["bench", "--full-size"]) == 1
    assert "--device cpu" in capsys.readouterr().err


def test_bad_dtype_is_an_argparse_error():
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--dtype", "fp64"])
    assert exc.value.code == 2


def test_spread_ages():
    assert spread_ages(1) == [80]
    assert spread_ages(80) == list(range(1, 81))
    ages = spread_ages(20)
    assert len(ages) == 20 and ages[0] == 1 and ages[-1] == 80 and ages == sorted(set(ages))


# ----------------------------------------------------------------------------- full-size shapes


def test_full_size_model_has_the_released_sizes():
    """Built on the meta device (no memory): the parameter counts of the released components."""
    from cradle2cane.testing.full_size import build_full_size_model

    model = build_full_size_model("meta", torch.float16)
    counts = D.parameter_counts(model)
    lora = sum(p.numel() for n, p in model.pipe.unet.named_parameters() if "lora_" in n)
    assert counts["unet"] - lora == 2_567_463_684  # SDXL UNet
    assert counts["vae"] == 83_653_863
    assert counts["text_encoder"] == 123_060_480  # CLIP-L text (SDXL)
    assert counts["text_encoder_2"] == 694_659_840  # OpenCLIP bigG text
    assert counts["clip"] == 427_616_513  # openai/clip-vit-large-patch14
    assert model.arcface.hidden_dim == 25088 and model.arcface.layers_per_stage == (3, 13, 30, 3)
    assert (model.face_projector.in_dim, model.face_projector.out_dim) == (25088, 2048)
    assert (model.clip_projector.in_dim, model.clip_projector.out_dim) == (768, 2048)
    assert model.resolution == 512 and model.pipe.vae.config.force_upcast is False
    assert set(D.component_dtypes(model).values()) == {"fp16"}
    assert D.attention_report(model)["all_sdpa"] is True


# ----------------------------------------------------------------------------- precision


def _without_fp16_fix_vae(tiny_models: Path, tmp_path: Path) -> Path:
    """The tiny set without sdxl-vae-fp16-fix/: the base's own (force_upcast) VAE is used."""
    folder = tmp_path / "models"
    folder.mkdir()
    for entry in tiny_models.iterdir():
        if entry.name != "sdxl-vae-fp16-fix":
            os.symlink(entry, folder / entry.name)
    return folder


def test_fp16_vae_only_with_the_fp16_fix_vae(tiny_models, tmp_path):
    from cradle2cane import Cradle2Cane

    fixed = Cradle2Cane.from_pretrained(tiny_models, device="cpu", dtype=torch.float16)
    assert fixed.pipe.vae.config.force_upcast is False
    assert D.component_dtypes(fixed) == {name: "fp16" for name in fixed.components()}

    plain = _without_fp16_fix_vae(tiny_models, tmp_path)
    original = Cradle2Cane.from_pretrained(plain, device="cpu", dtype=torch.float16)
    dtypes = D.component_dtypes(original)
    assert original.pipe.vae.config.force_upcast is True
    assert dtypes["vae"] == "fp32" and dtypes["unet"] == "fp16" and dtypes["text_encoder_2"] == "fp16"

    bf16 = Cradle2Cane.from_pretrained(plain, device="cpu", dtype=torch.bfloat16)
    assert D.component_dtypes(bf16)["vae"] == "bf16"  # bf16 has fp32's range: no upcast needed
    result = bf16(torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(FACE_SEED)), [60], 30, "male")
    assert result.images.dtype == torch.float32 and torch.isfinite(result.images).all()


def test_parse_dtype():
    assert P.parse_dtype("auto") is None and P.parse_dtype(None) is None
    assert P.parse_dtype("fp16") is torch.float16 and P.parse_dtype("bfloat16") is torch.bfloat16
    assert P.parse_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="fp32, fp16, bf16"):
        P.parse_dtype("fp8")
    assert P.default_dtype("cpu") is torch.float32 and P.default_dtype("cuda") is torch.float16


# ----------------------------------------------------------------------------- attention and memory


@pytest.fixture
def fresh_model(tiny_models):
    """A model of our own: these tests install hooks and change settings."""
    from cradle2cane import Cradle2Cane

    return Cradle2Cane.from_pretrained(tiny_models, device="cpu", dtype=torch.float32)


def test_attention_is_sdpa(fresh_model):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    report = D.attention_report(fresh_model)
    assert report["unet"] == ["AttnProcessor2_0"] and report["vae"] == ["AttnProcessor2_0"]
    assert report["text_encoder"] == "sdpa" and report["clip"] == "sdpa" and report["all_sdpa"]
    assert D.uses_sdpa(AttnProcessor2_0()) and not D.uses_sdpa(AttnProcessor())
    assert D.ensure_sdpa(fresh_model) is False  # already SDPA: nothing to change
    fresh_model.pipe.unet.set_attn_processor(AttnProcessor())
    assert D.attention_report(fresh_model)["all_sdpa"] is False
    assert D.ensure_sdpa(fresh_model) is True and D.attention_report(fresh_model)["all_sdpa"] is True


def test_offload_on_the_cpu_is_accepted_and_harmless(fresh_model):
    face = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(FACE_SEED))
    ages = [10, 33, 75]
    before = fresh_model(face, ages, 30, "female", seed=2)

    fresh_model.enable_model_cpu_offload("cpu")
    offload = fresh_model.offload
    assert fresh_model.device == torch.device("cpu")
    after = fresh_model(face, ages, 30, "female", seed=2)
    torch.testing.assert_close(after.images, before.images, atol=0, rtol=0)
    torch.testing.assert_close(after.aged, before.aged, atol=0, rtol=0)
    # every group was moved in around its stage, the UNet once per pass
    assert set(offload.history) == {"text_encoders", "unet", "vae", "identity"}
    assert offload.loads["unet"] == 2 and offload.history[-1] == "vae"

    fresh_model.enable_model_cpu_offload("cpu", low_vram=True)  # re-installing replaces the hooks
    assert fresh_model.pipe.vae.use_slicing and fresh_model.pipe.vae.use_tiling
    low = fresh_model(face, ages, 30, "female", seed=2)
    torch.testing.assert_close(low.images, before.images, atol=1e-4, rtol=0)
    assert offload.loads["unet"] == 2  # the old offloader's hooks are gone

    fresh_model.release_memory()
    assert fresh_model.offload.resident is None
    fresh_model.disable_model_cpu_offload()
    assert fresh_model.offload is None and not fresh_model.pipe.vae.use_slicing
    again = fresh_model(face, ages, 30, "female", seed=2)
    torch.testing.assert_close(again.images, before.images, atol=0, rtol=0)


def test_offload_keeps_the_lora_switching_correct(fresh_model):
    """Moving the UNet between devices must not lose the LoRA or its on/off state."""
    from cradle2cane.method.lora import lora_is_enabled

    fresh_model.enable_model_cpu_offload("cpu")
    assert lora_is_enabled(fresh_model.pipe.unet)
    fresh_model(torch.rand(1, 3, 128, 128), [50], 30, "male")
    assert lora_is_enabled(fresh_model.pipe.unet)


def test_from_pretrained_memory_modes(tiny_models):
    from cradle2cane import Cradle2Cane

    low = Cradle2Cane.from_pretrained(tiny_models, device="cpu", memory="low-vram")
    assert low.offload is not None and low.pipe.vae.use_slicing
    low.to("cpu")  # an explicit move ends the offload
    assert low.offload is None
    with pytest.raises(ValueError, match="memory must be one of default, offload, low-vram"):
        Cradle2Cane.from_pretrained(tiny_models, device="cpu", memory="tiny")


def test_release_memory_clears_the_clip_text_cache(fresh_model):
    fresh_model.clip.text(["30 years old"])
    assert fresh_model.clip._text_cache
    fresh_model.release_memory()
    assert not fresh_model.clip._text_cache
    M.release_memory()  # also fine without a model


def test_model_offload_moves_inputs_and_outputs():
    """The hooks hand a root's output back on its input's device, also through children."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    other = torch.nn.Linear(3, 2)
    offload = M.ModelOffload({"a": [net], "b": [other]}, "cpu")
    y = net(torch.ones(2, 4))
    assert y.shape == (2, 3) and offload.resident == "a"
    other(y)
    assert offload.resident == "b" and list(offload.history) == ["a", "b"]
    net[0](torch.ones(1, 4))  # a child alone also loads its group
    assert offload.resident == "a" and offload.loads["a"] == 2
    with pytest.raises(KeyError, match="no offload group 'c'"):
        offload.load("c")
    offload.remove()
    other(y)
    assert offload.resident == "a"


def test_peak_memory_helpers():
    device = torch.device("cpu")
    D.reset_peak_memory(device)
    peak, kind = D.peak_memory_mib(device)
    assert peak > 0 and kind.startswith("process_peak_rss")
    assert D.process_peak_rss_mib() > 0
