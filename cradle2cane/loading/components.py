"""Loading each released component from resolved paths, with errors that say how to fix things.

Shared by the ``Cradle2Cane`` facade and training, so both read the files the same way.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from . import paths as W
from .state_dicts import (check_lora, check_module_finite, check_readable, check_shapes, load_pickle_state_dict,
                          load_state_dict_file)
from ..method.arcface import IResNet, iresnet_from_state_dict, network_name
from ..method.lora import LORA_ADAPTER
from ..method.projectors import ProjectorMLP, expected_shapes, projector_from_state_dict

logger = logging.getLogger(__name__)

__all__ = ["LORA_ADAPTER", "check_files", "load_arcface", "load_base", "load_clip", "load_lora", "load_projector"]


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files transformers/diffusers load from a model folder: no variants
    (``*.fp16.safetensors``), shards included."""
    return sorted(p for p in folder.glob("*.safetensors") if p.name.count(".") == 1)


def check_files(paths: W.ModelPaths) -> None:
    """Every weight file's header or archive directory, in milliseconds, before anything is loaded:
    a truncated or overwritten download is named at once instead of after minutes of loading."""
    base_parts = [paths.base] if paths.base.is_file() else \
        [f for sub in sorted(p for p in paths.base.iterdir() if p.is_dir()) for f in _weight_files(sub)]
    checks = [(f, W.BASE_DIR if paths.base.is_dir() else "single") for f in base_parts]
    checks += [(f, W.VAE_DIR) for f in (_weight_files(paths.vae) if paths.vae else [])]
    checks += [(f, W.CLIP_DIR) for f in _weight_files(paths.clip)]
    checks += [(f, W.C2C_DIR) for f in (paths.arcface, paths.lora, paths.face_projector, paths.clip_projector)
               if f is not None]
    for path, name in checks:
        check_readable(path, W.source_of(name))


def load_clip(folder: Path, dtype: torch.dtype):
    from transformers import CLIPModel, CLIPTokenizer

    source = W.source_of(W.CLIP_DIR)
    try:
        model = CLIPModel.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers and safetensors raise many types; name the folder
        raise W.mismatch(folder, f"is not a complete CLIP model folder ({W.one_line(exc)})", source) from exc
    if len(tokenizer) < 100:  # a missing vocabulary silently yields a 2-token tokenizer
        raise W.mismatch(folder, f"has no usable tokenizer (vocab.json/merges.txt; got {len(tokenizer)} tokens)", source)
    check_module_finite(model, folder, source)
    return model.eval().requires_grad_(False), tokenizer


def load_base(paths: W.ModelPaths, clip_tokenizer, dtype: torch.dtype):
    """SDXL-Turbo img2img pipeline from a diffusers folder or a single-file checkpoint."""

    with warnings.catch_warnings():
        # diffusers 0.36+ renames torch_dtype to dtype; the old name works in every version we support
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        return _load_base(paths, clip_tokenizer, dtype)


def _load_base(paths: W.ModelPaths, clip_tokenizer, dtype: torch.dtype):
    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline

    vae = None
    if paths.vae is not None:
        try:
            vae = AutoencoderKL.from_pretrained(str(paths.vae), torch_dtype=dtype, local_files_only=True)
        except Exception as exc:  # diffusers and safetensors raise many types; name the folder
            raise W.mismatch(paths.vae, f"is not a complete diffusers VAE folder ({W.one_line(exc)})",
                             W.source_of(W.VAE_DIR)) from exc
        check_module_finite(vae, paths.vae, W.source_of(W.VAE_DIR))
    kwargs = {"vae": vae} if vae is not None else {}
    if paths.base.is_dir():
        try:
            pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                str(paths.base), torch_dtype=dtype, local_files_only=True, variant=_weights_variant(paths.base),
                **kwargs)
        except Exception as exc:
            raise W.mismatch(paths.base, f"is not a complete SDXL diffusers folder ({W.one_line(exc)})",
                             W.source_of(W.BASE_DIR)) from exc
    else:
        from .single_file import SDXL_TURBO_CONFIG_DIR, load_sdxl_single_file

        tokenizer_2 = _second_tokenizer(clip_tokenizer)
        try:
            pipe = load_sdxl_single_file(paths.base, paths.base_config or SDXL_TURBO_CONFIG_DIR, clip_tokenizer,
                                         tokenizer_2, torch_dtype=dtype)
        except (ValueError, FileNotFoundError):
            raise  # our own checks: they already name the file and say what to do
        except Exception as exc:
            raise W.mismatch(paths.base, f"cannot be loaded as an SDXL single-file checkpoint ({W.one_line(exc)})",
                             W.source_of("single")) from exc
        if vae is not None:
            pipe.vae = vae
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name != "vae" or vae is None:  # a separate VAE was checked above
            where = paths.base / name if paths.base.is_dir() else paths.base
            check_module_finite(getattr(pipe, name), where, W.source_of(W.BASE_DIR))
    if dtype == torch.float16 and pipe.vae.config.force_upcast:
        pipe.vae.to(torch.float32)  # the original SDXL VAE overflows in fp16
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _weights_variant(folder) -> str | None:
    """``"fp16"`` for a diffusers folder holding only the fp16 weight files (what the README's
    download fetches), ``None`` when the full-precision files are there."""
    unet = folder / "unet"
    if not (unet / "diffusion_pytorch_model.safetensors").is_file() and \
            (unet / "diffusion_pytorch_model.fp16.safetensors").is_file():
        return "fp16"
    return None


def _second_tokenizer(tokenizer):
    """SDXL's second tokenizer: the same CLIP BPE vocabulary, padding with '!'."""
    import copy

    second = copy.deepcopy(tokenizer)
    second.pad_token = "!"
    return second


def load_lora(pipe, path: Path) -> None:
    """The identity LoRA into the UNet, after checking it fits: every targeted layer has both
    halves, every key has a layer, every shape fits, no NaN/Inf (one line with counts otherwise)."""
    source = W.source_of(W.C2C_DIR)
    try:
        state, alphas, metadata = pipe.lora_state_dict(str(path.parent), weight_name=path.name,
                                                       unet_config=pipe.unet.config, return_lora_metadata=True,
                                                       local_files_only=True)
    except Exception as exc:  # safetensors, diffusers' format conversion: many types
        raise W.mismatch(path, f"cannot be read as an SDXL UNet LoRA ({W.one_line(exc)})", source) from exc
    metadata = metadata or {}
    check_lora(path, state, pipe.unet, metadata.get("unet.target_modules", metadata.get("target_modules")), source)
    try:
        pipe.load_lora_into_unet(state, network_alphas=alphas, unet=pipe.unet, adapter_name=LORA_ADAPTER,
                                 metadata=metadata or None, _pipeline=pipe)
    except Exception as exc:
        raise W.mismatch(path, f"cannot be loaded as an SDXL UNet LoRA ({W.one_line(exc)})", source) from exc


def load_arcface(path: Path, expected_network: str | None = None) -> IResNet:
    """The ArcFace iResNet in ``path``; its depth comes from the file. ``expected_network`` (the
    ``arcface_network`` of hparams.yml, e.g. ``r100``) only adds a warning when the file differs."""
    state = load_pickle_state_dict(path, W.source_of(W.C2C_DIR))
    try:
        net = iresnet_from_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise W.mismatch(path, f"is not an arcface_torch iResNet state dict ({W.one_line(exc)})",
                         W.source_of(W.C2C_DIR)) from exc
    name = network_name(net)
    if expected_network is not None and name != expected_network:
        logger.warning("%s is an iResNet %s, hparams.yml says %s; using the file's depth", path,
                       name or f"with stages {net.layers_per_stage}", expected_network)
    return net.eval().requires_grad_(False)


def load_projector(path: Path, in_dim: int, out_dim: int, what: str) -> ProjectorMLP:
    source = W.source_of(W.C2C_DIR)
    state = load_state_dict_file(path, source)
    check_shapes(path, state, expected_shapes(in_dim, out_dim), source,
                   f"a {what} {in_dim} -> {out_dim} (docs/method.md)")
    return projector_from_state_dict(state).requires_grad_(False)
