"""A full-size Cradle2Cane with random weights (SDXL-Turbo sizes), for benchmarks and layout checks
without downloading anything; on the meta device it allocates nothing."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path


CLIP_L_VOCAB = 49408


def clip_l_config(vocab_size: int, bos: int, eos: int):
    """openai/clip-vit-large-patch14's architecture (ViT-L/14 at 224 px, 768-d projection)."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=1, projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768),
        projection_dim=768)


def build_full_size_model(device: str = "cuda", dtype=None, seed: int = 0, lora_rank: int = 40):
    """A ``Cradle2Cane`` with random weights at the released sizes, built directly on ``device``.

    UNet, VAE and both text encoders come from the SDXL-Turbo configs shipped in
    ``cradle2cane/loading/configs/sdxl-turbo`` (the VAE with ``force_upcast`` off, as the fp16-fix VAE);
    CLIP-L, ArcFace iResNet-100 and the two projectors have their released shapes; the LoRA is rank
    40 on the UNet attention projections. The tokenizers use a byte-level vocabulary (no
    download), which keeps the 77-token sequences of the real ones. ``device="meta"`` builds the
    shapes only. Nothing is downloaded or written.
    """
    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ..method.arcface import IRESNET_LAYERS, IResNet
    from ..method.clip_features import ClipFeatures, ClipPreprocess
    from ..method.lora import add_lora
    from ..pipeline import Cradle2Cane
    from ..method.projectors import ProjectorMLP
    from ..loading.settings import Settings
    from ..loading.single_file import SDXL_TURBO_CONFIG_DIR as CONFIGS
    from ..runtime.precision import default_dtype
    from .tiny import write_tokenizer

    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="c2c-tokenizer-") as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tmp, pad_token="!")
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(CONFIGS / "unet")))
        vae = AutoencoderKL.from_config({**AutoencoderKL.load_config(str(CONFIGS / "vae")), "force_upcast": False})
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(CONFIGS / "text_encoder")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(CONFIGS / "text_encoder_2")))
        clip = CLIPModel(clip_l_config(CLIP_L_VOCAB, tokenizer.bos_token_id, tokenizer.eos_token_id))
        arcface = IResNet(IRESNET_LAYERS[settings.arcface_network])
        cross = int(unet.config.cross_attention_dim)
        face_projector = ProjectorMLP(arcface.hidden_dim, cross)
        clip_projector = ProjectorMLP(int(clip.config.projection_dim), cross)
        add_lora(unet, lora_rank, lora_rank, b_std=0.01)
    scheduler = EulerAncestralDiscreteScheduler.from_config(
        EulerAncestralDiscreteScheduler.load_config(str(CONFIGS / "scheduler")))
    modules = (unet, vae, text_encoder, text_encoder_2, clip, arcface, face_projector, clip_projector)
    for module in modules:
        if next(module.parameters()).dtype != dtype:
            module.to(dtype)
        module.eval().requires_grad_(False)
    pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                            scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return Cradle2Cane(pipe, arcface, face_projector, ClipFeatures(clip, tokenizer, ClipPreprocess()),
                       clip_projector, settings)


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
