"""``cradle2cane bench`` and the precision / memory options it measures (tiny models, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cradle2cane.runtime import acceleration as A
from cradle2cane.runtime import batching as B
from cradle2cane.runtime import diagnostics as D
from cradle2cane.runtime import offload as M
from cradle2cane.runtime import precision as P
from cradle2cane.tools.bench import spread_ages
from cradle2cane.tools.bench_floor import probe_batches, required_rows
from cradle2cane.tools.cli import main

FACE_SEED = 5


def _bench(*argv: str) -> int:
    return main(["bench", "--repeats", "1", "--warmup", "0", "--threads", str(torch.get_num_threads()), *argv])


# ----------------------------------------------------------------------------- the command


def test_bench_writes_a_valid_json_report(tiny_models, tiny_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert _bench("--models", str(tiny_models), "--ages", "3", "--profile", "--json", str(out)) == 0
    table = capsys.readouterr().out
    assert "per-age / sweep" in table and "reference / sweep" in table and "sweep efficiency" in table

    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["version"] == 2
    assert report["ages"] == spread_ages(3) == [1, 40, 80]
    assert report["device"] == "cpu" and report["dtype"] == "fp32" and report["resolution"] == 128
    assert report["clock"] == "process_cpu" and report["torch_threads"] == torch.get_num_threads()
    assert report["compile"] is None and report["channels_last"] is False
    assert report["batch_sizes"] == {"unet": 8, "vae": 8}  # 128 px: the tiny VAE's batch fits the CPU rule
    assert list(report["variants"]) == ["sweep", "per-age", "reference"]
    for name, v in report["variants"].items():
        assert v["images"] == 3 and len(v["times_s"]) == 1 and v["seconds_median"] > 0
        assert v["per_image_s_median"] == pytest.approx(v["seconds_median"] / 3)
        assert v["peak_mib"] > 0 and v["peak_kind"].startswith("process_peak_rss")
        profile = v["profile_s"]  # every module plus the rest adds up to the run (one repeat)
        assert set(profile) >= {"unet", "vae_encoder", "vae_decoder", "text_encoder", "arcface", "other"}
        assert sum(profile.values()) == pytest.approx(v["seconds_median"])
        assert profile["unet"] > 0 and profile["vae_decoder"] > 0
    assert report["process_peak_rss_mib"] >= max(v["peak_mib"] for v in report["variants"].values())
    sweep, per_age, reference = (report["variants"][k] for k in ("sweep", "per-age", "reference"))
    ratios = report["per_image_ratios"]
    assert ratios["per-age_over_sweep"] == pytest.approx(per_age["per_image_s_median"] / sweep["per_image_s_median"])
    assert ratios["reference_over_sweep"] == pytest.approx(reference["per_image_s_median"] /
                                                           sweep["per_image_s_median"])

    # The same UNet rows every way; the sweep shares what the loops repeat.
    rows = required_rows(tiny_model, report["ages"], 30)  # the same files: the same settings
    unet_rows = rows["unet_pass1"] + rows["unet_pass2"]
    for v in (sweep, per_age, reference):
        assert v["rows"]["unet"] == unet_rows
    assert reference["calls"]["unet"] == per_age["calls"]["unet"] == unet_rows > sweep["calls"]["unet"]
    # The reference encodes each prompt once (its pooled embedding comes from a step callback),
    # VAE-encodes the input once per age and runs CLIP's image tower once per age.
    assert reference["rows"]["text_encoder"] == reference["rows"]["text_encoder_2"] == 3
    assert reference["rows"]["vae_encoder"] == 2 * 3 and sweep["rows"]["vae_encoder"] == 1 + 3
    assert reference["rows"]["clip_vision"] == 3 and sweep["rows"]["clip_vision"] == 1
    assert sweep["rows"]["vae_decoder"] == reference["rows"]["vae_decoder"] == 2 * 3
    assert sweep["rows"]["arcface"] == rows["arcface"]

    floor = report["floor"]
    components = floor["components"]
    assert {k: c["rows"] for k, c in components.items()} == rows
    for c in components.values():
        assert c["per_row_s"][str(c["best_batch"])] == min(c["per_row_s"].values())
        assert c["floor_s"] == pytest.approx(c["rows"] * min(c["per_row_s"].values()))
    assert components["unet_pass1"]["policy_batch"] == 8 and components["vae_decoder"]["policy_batch"] == 8
    assert floor["seconds"] == pytest.approx(sum(c["floor_s"] for c in components.values()))
    assert floor["sweep_efficiency"] == pytest.approx(floor["seconds"] / sweep["seconds_median"])

    diffs = report["max_abs_diff"]
    assert diffs["per-age_vs_sweep"]["final"] < 1e-4  # same computation, batched: float rounding only
    # The reference hands 8-bit PIL images on: its aged image is the sweep's rounded to 1/255 (at
    # most 0.5/255 off), and pass 2 then starts from that rounded image.
    assert diffs["reference_vs_sweep"]["aged"] <= 0.5 / 255 + 1e-4
    assert diffs["reference_vs_sweep"]["final"] < 1e-2
    assert report["attention"]["all_sdpa"] is True
    assert report["component_dtypes"]["unet"] == "fp32"


def test_bench_default_tiny_set_offload_and_json_on_stdout(capsys):
    """No --models: the tiny set goes to a temporary folder; '--json -' keeps stdout pure JSON."""
    assert _bench("--age-list", "20,70", "--variants", "sweep,single", "--memory", "default,offload,low-vram",
                  "--no-floor", "--json", "-") == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "per image" not in captured.out and "sweep+offload" in captured.err
    assert report["models"].startswith("tiny")
    assert report["ages"] == [20, 70] and report["per_image_ratios"] == {} and report["floor"] is None
    assert list(report["variants"]) == ["sweep", "single", "sweep+offload", "single+offload",
                                        "sweep+low-vram", "single+low-vram"]
    assert report["variants"]["single"]["images"] == 1
    assert report["variants"]["sweep"]["profile_s"] is None
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
    (["--resolution", "100"], "multiple of 64"),
    (["--ages", "0"], "--ages must be between 1 and 80"),
    (["--ages", "81"], "--ages must be between 1 and 80"),
    (["--ages", "3", "--age-list", "10"], "either --ages"),
    (["--age-list", "10,abc"], "comma-separated whole ages"),
    (["--age-list", "120"], "between 0 and 100"),
    (["--source-age", "-3"], "--source-age"),
    (["--gender", "robot"], "--gender must be 'male' or 'female'"),
    (["--variants", "fast"], "choose from sweep, per-age, reference, single"),
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


def test_bad_dtype_or_compile_mode_is_an_argparse_error():
    for argv in (["--dtype", "fp64"], ["--compile", "fastest"]):
        with pytest.raises(SystemExit) as exc:
            main(["bench", *argv])
        assert exc.value.code == 2


def test_spread_ages():
    assert spread_ages(1) == [80]
    assert spread_ages(80) == list(range(1, 81))
    ages = spread_ages(20)
    assert len(ages) == 20 and ages[0] == 1 and ages[-1] == 80 and ages == sorted(set(ages))


def test_probe_batches():
    assert probe_batches(1, 8) == [1]
    assert probe_batches(21, 8) == [1, 2, 4, 8]
    assert probe_batches(3, 8) == [1, 2]
    assert probe_batches(40, 4) == [1, 2, 4]


# ----------------------------------------------------------------------------- batch policy


def test_batch_policy_on_the_cpu_sizes_the_vae_batch_by_its_activation(tiny_model):
    vae = tiny_model.pipe.vae  # 8 channels at full resolution: 128 Ki elements per 128 px image
    assert B.vae_activation_elements(vae, 128, 128) == 8 * 128 * 128
    assert B.vae_batch_size(vae, "cpu", 8, 128, 128) == 8
    assert B.vae_batch_size(vae, "cpu", 8, 256, 256) == 4
    assert B.vae_batch_size(vae, "cpu", 8, 512, 512) == 1  # where a batch cost 1.8x per image
    assert B.vae_batch_size(vae, "cpu", 3, 128, 128) == 3  # never above the user's cap
    assert B.vae_batch_size(vae, "cuda", 8, 512, 512) == 8  # GPUs batch up to the cap
    assert B.batch_sizes(vae, "cpu", 8, 512) == B.BatchSizes(unet=8, vae=1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        B.vae_batch_size(vae, "cpu", 0, 128, 128)


def test_the_facade_follows_the_batch_policy(tiny_models, monkeypatch):
    """With a budget of two images the sweep's VAE calls take two rows; the images do not change."""
    from cradle2cane import Cradle2Cane

    model = Cradle2Cane.from_pretrained(tiny_models, device="cpu", dtype=torch.float32)
    face = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(FACE_SEED))
    ages = [10, 33, 50, 75, 80]
    before = model(face, ages, 30, "male", seed=3)
    monkeypatch.setattr(B, "CPU_VAE_ACTIVATION_ELEMENTS", 2 * B.vae_activation_elements(model.pipe.vae, 128, 128))
    meter = D.ModuleMeter({"encoder": model.pipe.vae.encoder, "decoder": model.pipe.vae.decoder})
    with meter:
        after = model(face, ages, 30, "male", seed=3)
    assert meter.rows == {"encoder": 1 + 5, "decoder": 2 * 5}
    assert meter.calls == {"encoder": 1 + 3, "decoder": 2 * 3}  # 5 images in calls of 2, 2, 1
    torch.testing.assert_close(after.images, before.images, atol=1e-4, rtol=0)  # batched convs: rounding


# ----------------------------------------------------------------------------- measuring


def test_clock_and_module_meter():
    clock = D.Clock(torch.device("cpu"))
    assert clock.kind == "process_cpu"
    seconds, value = clock.time(lambda: sum(i * i for i in range(20000)))
    assert seconds > 0 and value == sum(i * i for i in range(20000))
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with D.ModuleMeter({"first": net[0], "span": (net[0], net[2])}, clock) as meter:
        net(torch.ones(3, 4))
        net(torch.ones(5, 4))
    assert meter.calls == {"first": 2, "span": 2} and meter.rows == {"first": 8, "span": 8}
    assert meter.seconds["span"] >= meter.seconds["first"] > 0
    net(torch.ones(1, 4))  # the hooks are gone
    assert meter.calls["first"] == 2


# ----------------------------------------------------------------------------- GPU speed options


class _Unet(torch.nn.Module):
    """The part of a UNet ``compile_unet`` relies on: ``conv_in`` and ``forward(sample, ...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.conv_out = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, sample, scale=1.0):
        return self.conv_out(torch.relu(self.conv_in(sample))) * scale


def test_compile_unet_keeps_results_and_hooks_and_undoes():
    """The mechanics with a counting backend (no compiler): hooks stay outside the compiled code,
    any batch size and input layout share one graph, recompiling replaces, None restores."""
    from types import SimpleNamespace

    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    unet = _Unet()
    model = SimpleNamespace(pipe=SimpleNamespace(unet=unet))
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eager = unet(x, scale=2.0)
    A.compile_unet(model, "default", backend=counting_backend)
    assert A.unet_compile_mode(model) == "default"
    with D.ModuleMeter({"unet": unet}) as meter:
        torch.testing.assert_close(unet(x, scale=2.0), eager, atol=0, rtol=0)
        unet(x[:2].contiguous(memory_format=torch.channels_last), scale=2.0)  # other batch, other layout
    assert meter.calls["unet"] == 2 and meter.rows["unet"] == 5 and len(graphs) == 1
    A.compile_unet(model, "max-autotune", backend=counting_backend)  # replaces, never nests
    assert A.unet_compile_mode(model) == "max-autotune" and "forward" in vars(unet)
    A.compile_unet(model, None)
    assert A.unet_compile_mode(model) is None and "forward" not in vars(unet)
    torch.testing.assert_close(unet(x, scale=2.0), eager, atol=0, rtol=0)
    with pytest.raises(ValueError, match="compile mode must be one of"):
        A.compile_unet(model, "fastest")


def test_channels_last_keeps_images_and_undoes(fresh_model):
    face = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(FACE_SEED))
    before = fresh_model(face, [60], 30, "female", seed=4)
    A.set_channels_last(fresh_model)
    assert all(A.is_channels_last(m) for m in (fresh_model.pipe.unet, fresh_model.pipe.vae, fresh_model.arcface))
    after = fresh_model(face, [60], 30, "female", seed=4)
    torch.testing.assert_close(after.images, before.images, atol=1e-4, rtol=0)  # other conv kernels: rounding
    A.set_channels_last(fresh_model, False)
    assert not A.is_channels_last(fresh_model.pipe.unet)


def test_the_bench_sets_up_compile_and_channels_last(fresh_model):
    """What --compile/--channels-last/--resolution do before the runs (compiling happens at the first call)."""
    from argparse import Namespace

    from cradle2cane.tools.bench import _prepare

    args = Namespace(resolution=64, channels_last=True, compile_mode="reduce-overhead", compile_backend="eager", seed=0)
    face = _prepare(fresh_model, args)
    assert fresh_model.resolution == 64 and face.shape == (1, 3, 64, 64)
    assert torch.equal(face, (face * 255).round() / 255)  # 8-bit values: the reference's PIL input is the same face
    assert A.unet_compile_mode(fresh_model) == "reduce-overhead" and A.is_channels_last(fresh_model.pipe.unet)


def test_the_bench_applies_its_run_options(capsys):
    assert _bench("--age-list", "40", "--variants", "reference,single", "--no-floor", "--resolution", "192",
                  "--reference-inference", "--channels-last", "--json", "-") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["resolution"] == 192 and report["batch_sizes"] == {"unet": 8, "vae": 7}  # 288 Ki elements each
    assert report["compile"] is None and report["channels_last"] is True
    assert report["reference_inference"] is True
    # With the script's input conversions the core matches the script's loop up to its 8-bit output:
    # one 8-bit step where a value sits at a rounding boundary.
    diff = report["max_abs_diff"]["single_vs_reference"]
    assert diff["aged"] <= 1 / 255 + 1e-4 and diff["final"] <= 1 / 255 + 1e-4


# ----------------------------------------------------------------------------- the GPU script


def test_gpu_script_dry_run_writes_one_json(tmp_path):
    """scripts/gpu_bench.sh on the CPU with the tiny set: every step runs and lands in one JSON."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench.sh"
    # The compile steps only add flags (checked below without compiling): they take minutes of
    # tracing on a CPU, so this run leaves them out (docs/performance.md: the full dry run).
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_BENCH_DRY_RUN": "1",
           "GPU_BENCH_STEPS": "eager,offload,profile"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["dry_run"] is True
    assert set(result["steps"]) == {"eager", "offload", "profile"}
    for name, step in result["steps"].items():
        assert step["status"] == "exit 0" and step["report"]["version"] == 2, name
    steps = {name: step["report"] for name, step in result["steps"].items()}
    assert list(steps["eager"]["variants"]) == ["sweep", "per-age", "reference", "single"]
    assert steps["eager"]["floor"]["sweep_efficiency"] > 0
    assert list(steps["offload"]["variants"]) == ["sweep+offload", "single+offload"]
    assert steps["profile"]["variants"]["sweep"]["profile_s"]["unet"] > 0
    summary = result["summary"]
    assert summary["sweep_s_per_image"] == {"eager": steps["eager"]["variants"]["sweep"]["per_image_s_median"],
                                            "compiled": None, "cudagraphs": None}
    assert summary["single_image_s"]["eager"] > 0
    assert summary["peak_mib"]["sweep+offload"] > 0 and summary["targets"]["met_on_this_device"] is None


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
    # The CPU batch rule at full size: one image per VAE call from 128 px up (a batch of 2 cost
    # 1.2x per image there, measured); GPUs batch up to the cap.
    assert B.batch_sizes(model.pipe.vae, "cpu", 8, 128) == B.BatchSizes(unet=8, vae=1)
    assert B.batch_sizes(model.pipe.vae, "cpu", 8, 64) == B.BatchSizes(unet=8, vae=4)
    assert B.batch_sizes(model.pipe.vae, "cuda", 8, 512) == B.BatchSizes(unet=8, vae=8)


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
