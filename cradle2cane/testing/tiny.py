"""A tiny random Cradle2Cane model set in the exact released layout, formats and key names.

Every test, the demo and the benchmarks run on it; real weights only change sizes. Components are
toy-sized but structurally real: a 4-level VAE (scale factor 8 as in SDXL), an SDXL UNet with text-time
conditioning, two CLIP text encoders of *different* widths (equal widths make diffusers' single-file
loader mix them up), a CLIP-L style dual-tower model with a byte-level BPE tokenizer, an iResNet-18
layout ArcFace, projectors with the released key names, a PEFT LoRA with rank/alpha metadata, the
single-file checkpoint beside the diffusers folder, and planted insightface ONNX models.
The same seed writes byte-identical files.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from ..files.atomic import atomic_path
from ..loading import paths as W
from ..method.lora import add_lora

logger = logging.getLogger(__name__)

TINY_RESOLUTION = 128
LORA_RANK, LORA_ALPHA = 4, 8
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2/CLIP convention)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer whose vocabulary is the byte alphabet (no merges); returns its size."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    vocab = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + list(SPECIAL_TOKENS):
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {"model_max_length": 77, "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1],
              "unk_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[1], "tokenizer_class": "CLIPTokenizer",
              "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "unk_token": SPECIAL_TOKENS[1],
         "pad_token": config["pad_token"]}, indent=2), encoding="utf-8")
    return len(vocab)


def _seeded(seed: int, offset: int) -> None:
    torch.manual_seed(seed * 1000 + offset)


def build_base(vocab_size: int, seed: int):
    """Tiny SDXL components: (unet, vae, text_encoder, text_encoder_2, scheduler)."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    te_common = dict(vocab_size=vocab_size, max_position_embeddings=77, num_hidden_layers=2, num_attention_heads=2,
                     hidden_act="quick_gelu", bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1)
    _seeded(seed, 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, projection_dim=32, **te_common))
    _seeded(seed, 2)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=64, intermediate_size=128, projection_dim=32, **{**te_common, "hidden_act": "gelu"}))
    pooled_dim, time_dim = 32, 8
    _seeded(seed, 3)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=1,
        attention_head_dim=(2, 4), cross_attention_dim=32 + 64, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim, norm_num_groups=8)
    _seeded(seed, 4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=TINY_RESOLUTION, scaling_factor=0.13025,
                        force_upcast=True)
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1)
    # Fresh modules are in train mode, where some layers differ slightly from inference.
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return unet, vae, text_encoder, text_encoder_2, scheduler


def build_lora_state(unet, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    """A non-zero PEFT LoRA on the UNet attention projections, as diffusers saves it."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    _seeded(seed, 5)
    config = add_lora(unet, LORA_RANK, LORA_ALPHA, adapter_name="default", b_std=0.05)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    unet.delete_adapters("default")
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: order varies per process
    return state, metadata


def write_clip(folder: Path, seed: int) -> None:
    from transformers import CLIPConfig, CLIPModel

    vocab_size = write_tokenizer(folder)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                         eos_token_id=vocab_size - 1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=16)
    _seeded(seed, 6)
    CLIPModel(config).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": {"shortest_edge": 224},
        "image_processor_type": "CLIPImageProcessor"}, indent=2), encoding="utf-8")


def write_hparams(path: Path, **overrides) -> None:
    import yaml

    values = {"t1": 10, "t2": 30, "id_strength": 0.25, "use_swr": True, "swr_alpha": 0.01, "swr_beta": 1.1,
              "clip_map_model": "angle", "infer_step": 4, "resolution": TINY_RESOLUTION, "arcface_network": "r18",
              "rank": LORA_RANK, "use_arcface_project": True, "use_clip_project": True,
              "face_project_use_hidden_state": True, "face_project_save_name": "face_project.bin",
              "clip_project_save_name": "clip_project.bin"}
    values.update(overrides)
    path.write_text(yaml.safe_dump(values, sort_keys=True), encoding="utf-8")


def write_tiny_models(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny model set into ``out_dir`` (created); returns the folder.

    Written into a temporary sibling folder first and renamed, so an interrupted run leaves
    nothing half-written.
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTokenizer

    from ..method.arcface import IResNet
    from ..method.projectors import ProjectorMLP
    from .sdxl_writer import save_sdxl_single_file
    from .planted_faces import write_insightface_pack

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    with atomic_path(out, directory=True) as work:
        tok_dir = work / "_tokenizer"
        vocab_size = write_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(tok_dir), pad_token="!")
        unet, vae, te1, te2, scheduler = build_base(vocab_size, seed)
        pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer,
                                                tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
        pipe.save_pretrained(str(work / W.BASE_DIR))
        save_sdxl_single_file(unet, vae, te1, te2, work / W.BASE_SINGLE_FILES[0], dtype=torch.float16)
        shutil.rmtree(tok_dir)

        # The fp16-fix VAE: same architecture, its own weights, safe to run in half precision.
        _seeded(seed, 7)
        fix_vae = type(vae).from_config({**vae.config, "force_upcast": False})
        fix_vae.save_pretrained(str(work / W.VAE_DIR))

        write_clip(work / W.CLIP_DIR, seed)

        c2c = work / W.C2C_DIR
        c2c.mkdir()
        lora_state, lora_config = build_lora_state(unet, seed)
        StableDiffusionXLImg2ImgPipeline.save_lora_weights(
            str(c2c), unet_lora_layers=lora_state, weight_name=W.LORA_FILE, unet_lora_adapter_metadata=lora_config)
        canonical_safetensors_header(c2c / W.LORA_FILE)

        _seeded(seed, 8)
        arcface = IResNet((2, 2, 2, 2), widths=(4, 8, 8, 16), num_features=32)
        _randomise_batchnorm(arcface)
        torch.save(arcface.state_dict(), work / W.ARCFACE_FILE)
        cross = int(unet.config.cross_attention_dim)
        _seeded(seed, 9)
        face = ProjectorMLP(arcface.hidden_dim, cross)
        _randomise_batchnorm(face)
        torch.save(face.state_dict(), c2c / "face_project.bin")
        _seeded(seed, 10)
        clip_proj = ProjectorMLP(16, cross)
        _randomise_batchnorm(clip_proj)
        torch.save(clip_proj.state_dict(), c2c / "clip_project.bin")
        write_hparams(c2c / W.HPARAMS_FILE, face_project_hidden_dim=arcface.hidden_dim,
                      face_project_output_dim=cross, clip_project_input_dim=16, clip_project_output_dim=cross)

        write_insightface_pack(work / "insightface" / "models" / "buffalo_l", seed=seed)

    logger.info("wrote the tiny model set to %s", out)
    return out


def canonical_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys: the writer orders metadata differently in
    every process, which would make "same seed, same bytes" false."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned, as the format recommends
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length:])


def _randomise_batchnorm(module: torch.nn.Module) -> None:
    """Give BatchNorm layers non-trivial running statistics so eval mode is exercised."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(100)
