"""SDXL single-file checkpoints: check them and load them offline.

A "single file" is the original Stability layout that ComfyUI's checkpoint loader and
``StableDiffusionXLPipeline.from_single_file`` read:

* ``model.diffusion_model.*``                       the UNet (LDM ``input_blocks``/``output_blocks``)
* ``first_stage_model.*``                           the VAE (LDM ``encoder.down.N.block.M`` ...)
* ``conditioner.embedders.0.transformer.text_model.*``  CLIP-L, Hugging Face layout
* ``conditioner.embedders.1.model.*``               OpenCLIP bigG (fused ``in_proj``, ``text_projection``)

Such a file carries no configs and no tokenizers. The SDXL-Turbo component configs ship with this
package (``SDXL_TURBO_CONFIG_DIR``); the tokenizers come from a CLIP-L folder at load time.

The writer of such files (used to build test fixtures) lives in ``cradle2cane.testing.sdxl_writer``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..runtime.precision import parse_dtype

logger = logging.getLogger(__name__)

__all__ = [
    "SDXL_TURBO_CONFIG_DIR",
    "load_sdxl_single_file",
    "check_sdxl_single_file",
]

SDXL_TURBO_CONFIG_DIR: Path = Path(__file__).resolve().parent / "configs" / "sdxl-turbo"
"""Published stabilityai/sdxl-turbo component configs (no weights, no tokenizers)."""

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
CLIP_G_PREFIX = "conditioner.embedders.1.model."

# Keys whose presence identifies an SDXL base-style checkpoint (base 1.0, Turbo, fine-tunes).
_SDXL_MARKERS = {
    "UNet": UNET_PREFIX + "input_blocks.0.0.weight",
    "UNet size-and-crop conditioning (label_emb)": UNET_PREFIX + "label_emb.0.0.weight",
    "CLIP-L text encoder": CLIP_L_PREFIX + "embeddings.position_embedding.weight",
    "OpenCLIP bigG text encoder": CLIP_G_PREFIX + "positional_embedding",
    "VAE": VAE_PREFIX + "encoder.conv_in.weight",
}

_CONFIG_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "scheduler/scheduler_config.json",
)


# --------------------------------------------------------------------------------------------
# diffusers -> single file
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# single file -> pipeline
# --------------------------------------------------------------------------------------------


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a checkpoint, without reading the weights where possible."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"Cannot read {path} as a safetensors file ({exc}); is it complete?") from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ValueError(f"Cannot read {path} as a PyTorch checkpoint ({exc}).") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _not_sdxl(path: Path, shapes: Mapping[str, tuple[int, ...]], missing: list[str]) -> ValueError:
    keys = list(shapes)
    if any(k.startswith("cond_stage_model.") for k in keys):
        kind = "it looks like a Stable Diffusion 1.x/2.x checkpoint (cond_stage_model.*)"
    elif CLIP_G_PREFIX.replace(".1.", ".0.") + "text_projection" in shapes:
        kind = "it looks like the SDXL refiner, which has no CLIP-L encoder"
    elif any(k.startswith(("down_blocks.", "conv_in.", "encoder.down_blocks.")) for k in keys):
        kind = "it is in diffusers layout (one component); pass the diffusers folder instead"
    elif any(k.startswith(UNET_PREFIX) for k in keys) and not any(k.startswith(VAE_PREFIX) for k in keys):
        kind = "it seems to hold only a UNet; a full checkpoint also has the VAE and text encoders"
    else:
        kind = f"it lacks {', '.join(missing)}"
    return ValueError(
        f"{path} is not an SDXL checkpoint: {kind}. Cradle2Cane needs an SDXL-Turbo (or SDXL base) "
        "single file such as sd_xl_turbo_1.0_fp16.safetensors."
    )


def _load_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def check_sdxl_single_file(
    path: str | os.PathLike[str], config_dir: str | os.PathLike[str] = SDXL_TURBO_CONFIG_DIR
) -> None:
    """Raise a precise error unless ``path`` is an SDXL single file whose sizes match ``config_dir``."""
    path = Path(path)
    config_dir = Path(config_dir)
    if not path.is_file():
        where = f"the folder {path.parent} exists" if path.parent.is_dir() else f"nor does {path.parent}"
        raise FileNotFoundError(
            f"SDXL checkpoint not found: {path} ({where}). Put the SDXL-Turbo single file "
            "(e.g. sd_xl_turbo_1.0_fp16.safetensors from stabilityai/sdxl-turbo) there, or pass a "
            "diffusers folder instead."
        )
    absent = [name for name in _CONFIG_FILES if not (config_dir / name).is_file()]
    if absent:
        raise FileNotFoundError(
            f"SDXL config folder {config_dir} lacks {', '.join(absent)}. It needs the diffusers "
            f"component configs; the package ships them in {SDXL_TURBO_CONFIG_DIR}."
        )

    shapes = _read_shapes(path)
    missing = [what for what, key in _SDXL_MARKERS.items() if key not in shapes]
    if missing:
        raise _not_sdxl(path, shapes, missing)

    unet_cfg = _load_json(config_dir / "unet" / "config.json")
    te_cfg = _load_json(config_dir / "text_encoder" / "config.json")
    te2_cfg = _load_json(config_dir / "text_encoder_2" / "config.json")
    found_expected = [
        ("UNet width", shapes[_SDXL_MARKERS["UNet"]][0], unet_cfg["block_out_channels"][0]),
        (
            "UNet added-conditioning width",
            shapes[_SDXL_MARKERS["UNet size-and-crop conditioning (label_emb)"]][1],
            unet_cfg["projection_class_embeddings_input_dim"],
        ),
        ("CLIP-L width", shapes[_SDXL_MARKERS["CLIP-L text encoder"]][-1], te_cfg["hidden_size"]),
        ("OpenCLIP bigG width", shapes[_SDXL_MARKERS["OpenCLIP bigG text encoder"]][-1], te2_cfg["hidden_size"]),
    ]
    wrong = [f"{what} {found} vs {expected}" for what, found, expected in found_expected if found != expected]
    if wrong:
        raise ValueError(
            f"{path} does not match the configs in {config_dir} (checkpoint vs config: "
            f"{'; '.join(wrong)}). Pass the config folder that belongs to this checkpoint."
        )


def load_sdxl_single_file(
    path: str | os.PathLike[str],
    config_dir: str | os.PathLike[str] = SDXL_TURBO_CONFIG_DIR,
    tokenizer: Any = None,
    tokenizer_2: Any = None,
    torch_dtype: torch.dtype | str = torch.float32,
    pipeline_cls: type | None = None,
    **components: Any,
):
    """Build an SDXL pipeline from a single file, fully offline.

    ``config_dir`` holds the diffusers component configs (default: the shipped SDXL-Turbo ones).
    The file has no tokenizers: pass both (CLIP-L's; the second pads with ``"!"``) unless
    ``config_dir`` has ``tokenizer/`` and ``tokenizer_2/`` folders. ``pipeline_cls`` defaults to
    ``StableDiffusionXLImg2ImgPipeline``; extra ``components`` (e.g. ``scheduler=``) are passed on.
    """
    if pipeline_cls is None:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        pipeline_cls = StableDiffusionXLImg2ImgPipeline
    torch_dtype = parse_dtype(torch_dtype) or torch.float32
    path = Path(path)
    config_dir = Path(config_dir)
    check_sdxl_single_file(path, config_dir)
    for name, value in (("tokenizer", tokenizer), ("tokenizer_2", tokenizer_2)):
        if value is None and not (config_dir / name).is_dir():
            raise ValueError(
                f"{name} is required: a single-file checkpoint carries no tokenizer and {config_dir} "
                f"has no {name}/ folder. Load CLIPTokenizer from clip-vit-large-patch14/"
                + (" with pad_token='!'." if name == "tokenizer_2" else ".")
            )
        if value is not None:
            components[name] = value

    pipe = pipeline_cls.from_single_file(
        str(path),
        config=str(config_dir),
        torch_dtype=torch_dtype,
        local_files_only=True,
        **components,
    )
    # diffusers creates modules on the meta device and fills them from the file; a weight the
    # file lacks would stay on meta and only fail at the first call. Fail here instead.
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is None or name in components:
            continue
        empty = [n for n, p in module.named_parameters() if p.is_meta]
        if empty:
            raise ValueError(
                f"{path} lacks {len(empty)} {name} weight(s), e.g. {empty[:3]}; the file is incomplete "
                f"or its architecture differs from the configs in {config_dir}."
            )
    return pipe
