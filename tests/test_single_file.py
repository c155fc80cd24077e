"""SDXL single-file checkpoints: shipped configs, the converter, and loading back offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from cradle2cane.testing.tiny import byte_alphabet
from cradle2cane.loading.single_file import SDXL_TURBO_CONFIG_DIR, check_sdxl_single_file, load_sdxl_single_file
from cradle2cane.testing.sdxl_writer import save_sdxl_single_file, sdxl_single_file_state_dict

torch.set_num_threads(1)

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


# --------------------------------------------------------------------------------------------
# a tiny random SDXL img2img pipeline (diffusers format)
# --------------------------------------------------------------------------------------------


def write_tiny_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(
        vocab_file=str(folder / "vocab.json"),
        merges_file=str(folder / "merges.txt"),
        pad_token=pad_token,
        model_max_length=77,
    )
    tok.save_pretrained(str(folder))
    return tok


def build_tiny_sdxl_img2img(folder: Path, seed: int = 0):
    """A toy-width SDXL img2img pipeline with random weights, saved as a diffusers folder."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    # Widths must differ: diffusers tells the two encoders apart by positional-embedding width.
    clip_l = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=514, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    clip_g = CLIPTextConfig(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=3,
        vocab_size=514, max_position_embeddings=77, hidden_act="gelu", projection_dim=32,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    text_encoder = CLIPTextModel(clip_l)
    text_encoder_2 = CLIPTextModelWithProjection(clip_g)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=32 + 64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        sample_size=32,
        scaling_factor=0.13025,
    )
    # Default inits leave many zeros and ones, which would hide swapped keys: jitter everything.
    with torch.no_grad():
        for module in (unet, vae, text_encoder, text_encoder_2):
            for param in module.parameters():
                param.add_(torch.randn_like(param) * 0.05)
            module.eval()  # as from_pretrained/from_single_file leave them; train mode changes VAE numerics
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="trailing",
    )
    tokenizer = write_tiny_clip_tokenizer(folder / "_tok1")
    tokenizer_2 = write_tiny_clip_tokenizer(folder / "_tok2", pad_token="!")
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
    )
    pipe.save_pretrained(str(folder))
    shutil.rmtree(folder / "_tok1")
    shutil.rmtree(folder / "_tok2")
    return pipe


def _copy_configs_only(src: Path, dst: Path) -> Path:
    """Component JSONs without weights or tokenizers: the shape of the shipped config folder."""
    for rel in ("model_index.json", "unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        for file in [src / rel] if rel.endswith(".json") else sorted((src / rel).glob("*.json")):
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return dst


def _img2img(pipe) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.random((1, 32, 32, 3), dtype=np.float32)
    out = pipe(
        prompt="a portrait of a person",
        image=image,
        strength=0.5,
        num_inference_steps=2,
        guidance_scale=0.0,
        generator=torch.Generator().manual_seed(123),
        output_type="np",
    )
    return out.images


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sdxl")
    pipe = build_tiny_sdxl_img2img(root / "diffusers")
    config_dir = _copy_configs_only(root / "diffusers", root / "configs")
    single = save_sdxl_single_file(
        pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, root / "ckpt" / "tiny-sdxl.safetensors"
    )
    loaded = load_sdxl_single_file(
        single, config_dir=config_dir, tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2
    )
    return {"root": root, "pipe": pipe, "config_dir": config_dir, "single": single, "loaded": loaded}


# --------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------


def test_round_trip_restores_every_parameter_exactly(tiny):
    for name in COMPONENTS:
        original = getattr(tiny["pipe"], name).state_dict()
        restored = getattr(tiny["loaded"], name).state_dict()
        assert set(original) == set(restored), name
        for key, value in original.items():
            other = restored[key]
            assert other.device.type == "cpu", (name, key)
            assert other.dtype == value.dtype, (name, key)
            assert torch.equal(value, other), f"{name}.{key} differs after the round trip"


def test_round_trip_img2img_gives_the_same_image(tiny):
    expected = _img2img(tiny["pipe"])
    got = _img2img(tiny["loaded"])
    assert expected.shape == (1, 32, 32, 3)
    assert np.isfinite(expected).all()
    # The weights are identical (test above), but the same fp32 computation is not bit-stable across
    # calls in one process: CPU kernels may pick another blocking/accumulation order (a few ulps, seen
    # up to 1.3e-6 here). 1e-5 is far below one 8-bit level (3.9e-3) and far above that rounding.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_loader_uses_config_dir_scheduler_and_pipeline_class(tiny):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    loaded = tiny["loaded"]
    assert isinstance(loaded, StableDiffusionXLImg2ImgPipeline)
    assert type(loaded.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    assert loaded.tokenizer_2.pad_token == "!"


def test_single_file_uses_the_original_key_layout(tiny):
    from safetensors import safe_open

    with safe_open(str(tiny["single"]), framework="pt") as f:
        keys = set(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        assert f.metadata() == {"format": "pt"}
    prefixes = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.text_model.",
                "conditioner.embedders.1.model.")
    assert all(k.startswith(prefixes) for k in keys)
    u = "model.diffusion_model."
    # 2 blocks x 2 layers: input 1,2 | downsample 3 | 4,5 (with transformers); output 0-2 | 3-5.
    for key in ("input_blocks.0.0.weight", "input_blocks.3.0.op.weight", "input_blocks.4.0.skip_connection.weight",
                "input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight", "middle_block.1.proj_in.weight",
                "middle_block.2.emb_layers.1.weight", "output_blocks.2.2.conv.weight",
                "output_blocks.5.0.out_layers.3.weight", "label_emb.0.2.bias", "time_embed.2.weight",
                "out.2.weight"):
        assert u + key in keys, key
    assert u + "input_blocks.2.1.proj_in.weight" not in keys  # DownBlock2D has no transformer
    assert shapes[u + "input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"] == (64, 96)
    v = "first_stage_model."
    assert shapes[v + "encoder.mid.attn_1.q.weight"] == (64, 64, 1, 1)
    assert v + "decoder.up.1.upsample.conv.weight" in keys and v + "decoder.up.0.upsample.conv.weight" not in keys
    assert v + "encoder.down.1.block.0.nin_shortcut.weight" in keys
    g = "conditioner.embedders.1.model."
    assert shapes[g + "transformer.resblocks.2.attn.in_proj_weight"] == (3 * 64, 64)
    assert shapes[g + "transformer.resblocks.2.attn.in_proj_bias"] == (3 * 64,)
    assert shapes[g + "text_projection"] == (64, 32)  # [width, projection_dim], OpenCLIP's way round
    assert shapes[g + "positional_embedding"] == (77, 64)
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys


def test_save_is_atomic_and_casts_dtype(tiny, tmp_path):
    from safetensors import safe_open

    pipe = tiny["pipe"]
    target = tmp_path / "half.safetensors"
    target.write_bytes(b"old")
    save_sdxl_single_file(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, target, dtype=torch.float16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.safetensors"]  # no temp file left
    with safe_open(str(target), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}

    # A failed write keeps the previous file and leaves no temp file behind.
    pipe_te2 = pipe.text_encoder_2
    with pytest.raises(ValueError, match="text_projection"):
        save_sdxl_single_file(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.safetensors"]
    assert pipe_te2 is pipe.text_encoder_2


def test_half_precision_load(tiny):
    loaded = load_sdxl_single_file(
        tiny["single"], config_dir=tiny["config_dir"], tokenizer=tiny["pipe"].tokenizer,
        tokenizer_2=tiny["pipe"].tokenizer_2, torch_dtype="fp16",
    )
    for name in COMPONENTS:
        assert {p.dtype for p in getattr(loaded, name).parameters()} == {torch.float16}, name
    ref = tiny["pipe"].unet.state_dict()["conv_in.weight"].half()
    assert torch.equal(loaded.unet.state_dict()["conv_in.weight"], ref)


def test_text_to_image_pipeline_class(tiny):
    from diffusers import StableDiffusionXLPipeline

    loaded = load_sdxl_single_file(
        tiny["single"], config_dir=tiny["config_dir"], tokenizer=tiny["pipe"].tokenizer,
        tokenizer_2=tiny["pipe"].tokenizer_2, pipeline_cls=StableDiffusionXLPipeline,
    )
    assert type(loaded) is StableDiffusionXLPipeline
    assert torch.equal(loaded.text_encoder_2.text_projection.weight, tiny["pipe"].text_encoder_2.text_projection.weight)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "models" / "checkpoints" / "sd_xl_turbo_1.0_fp16.safetensors"
    with pytest.raises(FileNotFoundError, match="sd_xl_turbo_1.0_fp16.safetensors") as info:
        load_sdxl_single_file(missing, tokenizer=object(), tokenizer_2=object())
    assert str(missing) in str(info.value)


def test_missing_config_dir_is_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json") as info:
        check_sdxl_single_file(tiny["single"], tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_sd15_checkpoint_is_rejected_as_not_sdxl(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "v1-5.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 8),
            "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
        },
        str(path),
    )
    with pytest.raises(ValueError, match="not an SDXL checkpoint.*1.x/2.x"):
        load_sdxl_single_file(path, tokenizer=object(), tokenizer_2=object())


def test_garbage_file_is_reported(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="broken.safetensors"):
        check_sdxl_single_file(path)


def test_sizes_that_do_not_match_the_configs_are_reported(tiny):
    with pytest.raises(ValueError, match="does not match the configs") as info:
        check_sdxl_single_file(tiny["single"], SDXL_TURBO_CONFIG_DIR)
    assert "UNet width 32 vs 320" in str(info.value)


def test_unknown_dtype_name_is_refused(tiny):
    with pytest.raises(ValueError, match="dtype must be auto or one of fp32, fp16, bf16; got 'float8'"):
        load_sdxl_single_file(tiny["single"], config_dir=tiny["config_dir"], torch_dtype="float8")


def test_tokenizers_are_required_without_tokenizer_folders(tiny):
    with pytest.raises(ValueError, match="tokenizer_2 is required"):
        load_sdxl_single_file(tiny["single"], config_dir=tiny["config_dir"], tokenizer=tiny["pipe"].tokenizer)


def test_non_sdxl_unet_is_refused(tiny):
    from diffusers import UNet2DConditionModel

    sd15_like = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2,
    )
    p = tiny["pipe"]
    with pytest.raises(ValueError, match="not an SDXL UNet"):
        sdxl_single_file_state_dict(sd15_like, p.vae, p.text_encoder, p.text_encoder_2)


# --------------------------------------------------------------------------------------------
# shipped SDXL-Turbo configs
# --------------------------------------------------------------------------------------------


def test_shipped_configs_load_with_published_values():
    from diffusers import AutoencoderKL, DiffusionPipeline, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    root = SDXL_TURBO_CONFIG_DIR
    assert root.is_dir()
    assert not (root / "tokenizer").exists() and not (root / "tokenizer_2").exists()

    index = DiffusionPipeline.load_config(str(root))
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["scheduler"] == ["diffusers", "EulerAncestralDiscreteScheduler"]

    unet = UNet2DConditionModel.load_config(str(root), subfolder="unet")
    assert unet["cross_attention_dim"] == 2048
    assert unet["sample_size"] == 64
    assert unet["block_out_channels"] == [320, 640, 1280]
    assert unet["transformer_layers_per_block"] == [1, 2, 10]
    assert unet["projection_class_embeddings_input_dim"] == 2816 == 6 * 256 + 1280
    assert unet["addition_embed_type"] == "text_time"

    vae = AutoencoderKL.load_config(str(root), subfolder="vae")
    assert vae["scaling_factor"] == 0.13025 and vae["block_out_channels"] == [128, 256, 512, 512]

    scheduler = EulerAncestralDiscreteScheduler.from_pretrained(str(root), subfolder="scheduler")
    assert scheduler.config.timestep_spacing == "trailing"

    te = CLIPTextConfig.from_pretrained(str(root / "text_encoder"))
    te2 = CLIPTextConfig.from_pretrained(str(root / "text_encoder_2"))
    assert (te.hidden_size, te.num_hidden_layers, te.hidden_act) == (768, 12, "quick_gelu")
    assert (te2.hidden_size, te2.num_hidden_layers, te2.projection_dim, te2.hidden_act) == (1280, 32, 1280, "gelu")
    assert te.hidden_size + te2.hidden_size == unet["cross_attention_dim"]


def test_full_size_sdxl_key_layout_on_meta_tensors():
    """The converter on full SDXL-Turbo (no memory: meta tensors) gives the released key layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = str(SDXL_TURBO_CONFIG_DIR)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(os.path.join(root, "text_encoder")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(os.path.join(root, "text_encoder_2")))
    state = sdxl_single_file_state_dict(unet, vae, te, te2, dtype=torch.float16)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    u, v, g = "model.diffusion_model.", "first_stage_model.", "conditioner.embedders.1.model."
    expected = {
        u + "input_blocks.0.0.weight": (320, 4, 3, 3),
        u + "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        u + "input_blocks.6.0.op.weight": (640, 640, 3, 3),
        u + "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        u + "middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        u + "output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        u + "output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        u + "output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        u + "label_emb.0.0.weight": (1280, 2816),
        v + "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        v + "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        v + "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        g + "transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        g + "text_projection": (1280, 1280),
        g + "positional_embedding": (77, 1280),
        g + "token_embedding.weight": (49408, 1280),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert u + "output_blocks.8.2.conv.weight" not in shapes and u + "output_blocks.8.1.conv.weight" not in shapes
    assert v + "decoder.up.0.upsample.conv.weight" not in shapes
    assert not any(".output_blocks.9." in k or ".input_blocks.9." in k for k in shapes)
    assert {t.dtype for t in state.values()} == {torch.float16}
    # The diffusers marker for "SDXL base" (needs >= 10 OpenCLIP layers) is present at full size.
    assert g + "transformer.resblocks.9.mlp.c_proj.bias" in shapes
    with pytest.raises(ValueError, match="meta device"):
        save_sdxl_single_file(unet, vae, te, te2, Path("/nonexistent-dir-not-created/x.safetensors"))
