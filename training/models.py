"""The frozen and trainable parts of a training run, loaded with the core's own loaders, and
written back in the released layout (docs/method.md) so that
``Cradle2Cane.from_pretrained(models_dir, cradle2cane_dir=<folder>)`` loads them unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cradle2cane.files.atomic import write_atomic, write_text_atomic
from cradle2cane.loading import paths as W
from cradle2cane.method.arcface import IResNet, network_name
from cradle2cane.method.clip_features import ClipFeatures, ClipPreprocess
from cradle2cane.loading.components import check_files, load_arcface, load_base, load_clip
from cradle2cane.method.lora import LORA_ADAPTER, add_lora
from cradle2cane.method.projectors import ProjectorMLP
from cradle2cane.loading.settings import Settings
from cradle2cane.loading.state_dicts import load_pickle_state_dict

from .config import Config, ConfigError, dump

logger = logging.getLogger(__name__)

FACE_PROJECTOR_FILE = "face_project.bin"
CLIP_PROJECTOR_FILE = "clip_project.bin"
RELEASED_FILES = (W.LORA_FILE, FACE_PROJECTOR_FILE, CLIP_PROJECTOR_FILE, W.HPARAMS_FILE)


@dataclass
class TrainParts:
    pipe: Any  # StableDiffusionXLImg2ImgPipeline
    arcface: IResNet
    clip: ClipFeatures
    face_projector: ProjectorMLP
    clip_projector: ProjectorMLP
    settings: Settings
    lora_config: Any  # peft.LoraConfig
    paths: W.ModelPaths

    @property
    def unet(self):
        return self.pipe.unet


def resolve_paths(cfg: Config) -> W.ModelPaths:
    """The base, VAE, CLIP and ArcFace files of ``models_dir`` (there are no Cradle2Cane files yet)."""
    root = cfg.path("models_dir")
    if root is None or not root.is_dir():
        raise W.ModelFileError(f"models folder {root} does not exist; it must hold {W.BASE_DIR}/, {W.CLIP_DIR}/ and "
                               f"{W.ARCFACE_FILE} (see the README's model table)")
    base, base_config = W.resolve_base(root, cfg.path("pretrained_model_name_or_path"))
    vae = cfg.path("pretrained_vae_model_name_or_path")
    if vae is not None and not (vae / "config.json").is_file():
        raise W.missing(vae / "config.json", vae, "a diffusers AutoencoderKL folder", W.source_of(W.VAE_DIR))
    if vae is None and (root / W.VAE_DIR / "config.json").is_file():
        vae = root / W.VAE_DIR
    clip = cfg.path("clip_L_path") or root / W.CLIP_DIR
    if not (clip / "config.json").is_file():
        raise W.missing(clip / "config.json", clip, "the openai/clip-vit-large-patch14 transformers folder",
                        W.source_of(W.CLIP_DIR))
    arcface = cfg.path("arcface_weight") or root / W.ARCFACE_FILE
    if not arcface.is_file():
        raise W.missing(arcface, arcface.parent, "the ArcFace iResNet-100 state dict", W.source_of(W.C2C_DIR))
    return W.ModelPaths(base=base, base_config=base_config, vae=vae, clip=clip, arcface=arcface, lora=None,
                        face_projector=None, clip_projector=None, hparams=None)


def build_settings(cfg: Config, arcface: IResNet, unet_width: int, clip_width: int) -> Settings:
    """The inference settings this run trains for (they go into hparams.yml)."""
    return Settings(t1=cfg.t1, t2=cfg.t2, one_threshold=cfg.one_threshold, id_strength=cfg.id_strength,
                    use_swr=cfg.use_swr, swr_alpha=cfg.swr_alpha, swr_beta=cfg.swr_beta,
                    clip_map_model=cfg.clip_map_model, infer_step=cfg.infer_step, resolution=cfg.resolution,
                    arcface_network=network_name(arcface) or "custom", rank=cfg.rank, lora_alpha=float(cfg.lora_alpha),
                    face_project_hidden_dim=arcface.hidden_dim, face_project_output_dim=unet_width,
                    clip_project_input_dim=clip_width, clip_project_output_dim=unet_width,
                    face_project_save_name=FACE_PROJECTOR_FILE, clip_project_save_name=CLIP_PROJECTOR_FILE)


def load_parts(cfg: Config, weight_dtype: torch.dtype, device: torch.device) -> TrainParts:
    """Frozen base, CLIP and ArcFace (core loaders), a fresh LoRA and fresh projectors (float32)."""
    paths = resolve_paths(cfg)
    check_files(paths)
    clip_model, tokenizer = load_clip(paths.clip, weight_dtype)
    pipe = load_base(paths, tokenizer, weight_dtype)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
    arcface = load_arcface(paths.arcface)  # no hparams.yml yet: the file's depth is the truth
    unet_width = int(pipe.unet.config.cross_attention_dim)
    clip_width = int(clip_model.config.projection_dim)
    settings = build_settings(cfg, arcface, unet_width, clip_width)
    try:
        config = add_lora(pipe.unet, cfg.rank, cfg.lora_alpha, cfg.lora_target_modules)
    except ValueError as exc:
        raise ConfigError(f"lora_target_modules {cfg.lora_target_modules}: {exc}") from exc
    face_projector = ProjectorMLP(arcface.hidden_dim, unet_width)
    clip_projector = ProjectorMLP(clip_width, unet_width)
    pipe.to(device)
    clip_model.to(device)
    arcface.to(device)
    face_projector.to(device)
    clip_projector.to(device)
    for p in pipe.unet.parameters():  # trainable LoRA weights in float32 (the base stays in weight_dtype)
        if p.requires_grad:
            p.data = p.data.float()
    clip = ClipFeatures(clip_model, tokenizer, ClipPreprocess.from_folder(paths.clip))
    return TrainParts(pipe, arcface, clip, face_projector, clip_projector, settings, config, paths)


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if p.requires_grad and "lora_" in n]


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet LoRA in diffusers' key format (what ``save_lora_weights`` expects)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=LORA_ADAPTER)
    return {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}


def hparams(cfg: Config, settings: Settings) -> dict[str, Any]:
    """hparams.yml: the training configuration plus the inference settings it implies."""
    values = cfg.to_dict()
    values.update(settings.to_mapping())
    values["use_arcface_project"] = values["use_clip_project"] = values["face_project_use_hidden_state"] = True
    return values


def save_released(folder: str | Path, unet: torch.nn.Module, face_projector: torch.nn.Module,
                  clip_projector: torch.nn.Module, config, values: dict[str, Any]) -> Path:
    """Write the four released files into ``folder`` (created)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora = lora_state_dict(unet)
    write_atomic(folder / W.LORA_FILE, lambda tmp: StableDiffusionXLImg2ImgPipeline.save_lora_weights(
        str(tmp.parent), unet_lora_layers=lora, weight_name=tmp.name, unet_lora_adapter_metadata=config.to_dict()))
    for module, name in ((face_projector, FACE_PROJECTOR_FILE), (clip_projector, CLIP_PROJECTOR_FILE)):
        state = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu()
                 for k, v in module.state_dict().items()}
        write_atomic(folder / name, lambda tmp, s=state: torch.save(s, tmp))
    text = dump({k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()})
    write_text_atomic(folder / W.HPARAMS_FILE, text)
    return folder


def load_released(folder: str | Path, unet: torch.nn.Module, face_projector: torch.nn.Module,
                  clip_projector: torch.nn.Module) -> None:
    """Load LoRA and projector weights written by ``save_released`` into the training modules."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    folder = Path(folder)
    for name in (W.LORA_FILE, FACE_PROJECTOR_FILE, CLIP_PROJECTOR_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"checkpoint {folder} is incomplete: {name} is missing")
    state, _ = StableDiffusionXLImg2ImgPipeline.lora_state_dict(str(folder), weight_name=W.LORA_FILE)
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name=LORA_ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{folder / W.LORA_FILE}: keys that this run's LoRA does not have "
                         f"({unexpected[:3]} ...); was it trained with another rank or lora_target_modules?")
    for module, name in ((face_projector, FACE_PROJECTOR_FILE), (clip_projector, CLIP_PROJECTOR_FILE)):
        projector_state = load_pickle_state_dict(folder / name, f"checkpoint {folder}")
        try:
            module.load_state_dict(projector_state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{folder / name} does not fit this run's projector ({exc})") from exc
