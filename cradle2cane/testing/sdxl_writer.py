"""Writing SDXL single-file checkpoints from diffusers components (the original Stability layout).

Used to build the tiny single-file fixture and to check the full SDXL key layout on the meta device.
The converter derives every block and layer count from the components' own configs, so the
tiny random models go through exactly the code path that full SDXL does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..files.atomic import write_atomic
from ..loading.single_file import CLIP_G_PREFIX, CLIP_L_PREFIX, UNET_PREFIX, VAE_PREFIX

logger = logging.getLogger(__name__)


# Sub-module renames inside one block, diffusers name -> LDM name.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}


_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


_CLIP_G_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


class _PrefixMap:
    """Maps ``<diffusers module prefix>.<rest>`` to ``<ldm prefix>.<renamed rest>``.

    The longest registered prefix wins; ``renames`` rewrites the head of ``rest`` (also
    longest match first). Unmapped keys are collected so that an unsupported architecture is
    reported instead of silently written with missing weights.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, Mapping[str, str] | None]] = {}

    def add(self, src: str, dst: str, renames: Mapping[str, str] | None = None) -> None:
        self._entries[src] = (dst, renames)

    def __call__(self, key: str) -> str | None:
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            src = ".".join(parts[:cut])
            if src in self._entries:
                dst, renames = self._entries[src]
                rest = ".".join(parts[cut:])
                if renames:
                    rest = _rename_head(rest, renames)
                return f"{dst}.{rest}"
        return None


def _rename_head(rest: str, renames: Mapping[str, str]) -> str:
    parts = rest.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in renames:
            return ".".join([renames[head], *parts[cut:]])
    return rest


def _layers_per_block(config: Mapping[str, Any], what: str) -> int:
    lpb = config["layers_per_block"]
    if isinstance(lpb, (list, tuple)):
        if len(set(lpb)) != 1:
            raise ValueError(
                f"{what} has a different layers_per_block per block ({list(lpb)}); the original "
                "single-file layout (and diffusers' reader of it) needs one value for all blocks."
            )
        lpb = lpb[0]
    return int(lpb)


def _unet_map(config: Mapping[str, Any]) -> _PrefixMap:
    """Key map for ``UNet2DConditionModel`` (SDXL family) -> LDM ``openaimodel.UNetModel``."""
    m = _PrefixMap()
    lpb = _layers_per_block(config, "The UNet")
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    mid_type = config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    if mid_type != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"UNet mid_block_type {mid_type!r} is not SDXL's UNetMidBlock2DCrossAttn.")

    m.add("conv_in", "input_blocks.0.0")
    m.add("time_embedding.linear_1", "time_embed.0")
    m.add("time_embedding.linear_2", "time_embed.2")
    m.add("add_embedding.linear_1", "label_emb.0.0")
    m.add("add_embedding.linear_2", "label_emb.0.2")
    m.add("conv_norm_out", "out.0")
    m.add("conv_out", "out.2")

    # input_blocks: slot 0 is conv_in; each down block has lpb (resnet[, transformer]) slots,
    # followed by one downsample slot unless it is the last block.
    slot = 1
    for b, _ in enumerate(down_types):
        for layer in range(lpb):
            m.add(f"down_blocks.{b}.resnets.{layer}", f"input_blocks.{slot}.0", _UNET_RESNET)
            m.add(f"down_blocks.{b}.attentions.{layer}", f"input_blocks.{slot}.1")
            slot += 1
        if b < len(down_types) - 1:
            m.add(f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{slot}.0.op")
            slot += 1

    m.add("mid_block.resnets.0", "middle_block.0", _UNET_RESNET)
    m.add("mid_block.attentions.0", "middle_block.1")
    m.add("mid_block.resnets.1", "middle_block.2", _UNET_RESNET)

    # output_blocks: each up block has lpb + 1 slots; the last slot of every block but the
    # final one also holds the upsampler, after the transformer when the block has one.
    slot = 0
    for b, block_type in enumerate(up_types):
        has_attention = "CrossAttn" in block_type
        for layer in range(lpb + 1):
            m.add(f"up_blocks.{b}.resnets.{layer}", f"output_blocks.{slot}.0", _UNET_RESNET)
            m.add(f"up_blocks.{b}.attentions.{layer}", f"output_blocks.{slot}.1")
            if layer == lpb and b < len(up_types) - 1:
                index = 2 if has_attention else 1
                m.add(f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{slot}.{index}.conv")
            slot += 1
    return m


def _vae_map(config: Mapping[str, Any]) -> _PrefixMap:
    """Key map for ``AutoencoderKL`` -> LDM ``AutoencoderKL`` (``encoder.down``/``decoder.up``)."""
    m = _PrefixMap()
    n_down = len(config["down_block_types"])
    n_up = len(config["up_block_types"])
    lpb = _layers_per_block(config, "The VAE")

    for side in ("encoder", "decoder"):
        m.add(f"{side}.conv_in", f"{side}.conv_in")
        m.add(f"{side}.conv_out", f"{side}.conv_out")
        m.add(f"{side}.conv_norm_out", f"{side}.norm_out")
        m.add(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", _VAE_RESNET)
        m.add(f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", _VAE_RESNET)
        m.add(f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", _VAE_ATTENTION)
    m.add("quant_conv", "quant_conv")
    m.add("post_quant_conv", "post_quant_conv")

    for b in range(n_down):
        for layer in range(lpb):
            m.add(f"encoder.down_blocks.{b}.resnets.{layer}", f"encoder.down.{b}.block.{layer}", _VAE_RESNET)
        m.add(f"encoder.down_blocks.{b}.downsamplers.0.conv", f"encoder.down.{b}.downsample.conv")
    # The LDM decoder numbers its levels by resolution (up.0 is full size); diffusers numbers
    # them in execution order (up_blocks.0 is the smallest).
    for b in range(n_up):
        level = n_up - 1 - b
        for layer in range(lpb + 1):
            m.add(f"decoder.up_blocks.{b}.resnets.{layer}", f"decoder.up.{level}.block.{layer}", _VAE_RESNET)
        m.add(f"decoder.up_blocks.{b}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv")
    return m


def _strip_text_model(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` prefix); accept both."""
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def _tensor(value: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    value = value.detach()
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value


def _convert_module(
    state: Mapping[str, torch.Tensor], mapper: _PrefixMap, prefix: str, what: str, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        target = mapper(key)
        if target is None:
            unmapped.append(key)
            continue
        out[prefix + target] = _tensor(value, dtype)
    if unmapped:
        raise ValueError(
            f"The {what} has {len(unmapped)} weight(s) with no place in the SDXL single-file layout, "
            f"e.g. {unmapped[:5]}. Only SDXL-architecture components can be saved as one file."
        )
    return out


def _convert_vae(vae: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = _convert_module(vae.state_dict(), _vae_map(vae.config), VAE_PREFIX, "VAE", dtype)
    # The LDM VAE's mid attention uses 1x1 convolutions where diffusers uses linear layers.
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            out[key] = value.reshape(*value.shape, 1, 1)
    return out


def _convert_clip_l(text_encoder: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    state = _strip_text_model(text_encoder.state_dict())
    extra = [k for k in state if not k.startswith(("embeddings.", "encoder.", "final_layer_norm."))]
    if extra:
        raise ValueError(
            f"text_encoder has weights outside a plain CLIPTextModel ({extra[:5]}); SDXL's first "
            "text encoder is CLIP-L without a projection."
        )
    return {CLIP_L_PREFIX + k: _tensor(v, dtype) for k, v in state.items()}


def _convert_clip_g(text_encoder_2: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    state = _strip_text_model(text_encoder_2.state_dict())
    n_layers = int(text_encoder_2.config.num_hidden_layers)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}

    singles = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    layer_map = _PrefixMap()
    for i in range(n_layers):
        layer_map.add(f"encoder.layers.{i}", f"transformer.resblocks.{i}", _CLIP_G_LAYER)

    unmapped = []
    for key, value in state.items():
        if key in singles:
            out[CLIP_G_PREFIX + singles[key]] = _tensor(value, dtype)
        elif key == "text_projection.weight":
            # OpenCLIP multiplies x @ text_projection; nn.Linear stores the transpose.
            out[CLIP_G_PREFIX + "text_projection"] = _tensor(value, dtype).t().contiguous()
        elif ".self_attn." in key and key.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
            layer, _, proj, kind = key.rsplit(".", 3)
            fused.setdefault(f"{layer}.{kind}", {})[proj] = _tensor(value, dtype)
        else:
            target = layer_map(key)
            if target is None:
                unmapped.append(key)
            else:
                out[CLIP_G_PREFIX + target] = _tensor(value, dtype)
    if unmapped:
        raise ValueError(
            f"text_encoder_2 has {len(unmapped)} weight(s) with no place in the OpenCLIP layout, "
            f"e.g. {unmapped[:5]}."
        )
    if CLIP_G_PREFIX + "text_projection" not in out:
        raise ValueError("text_encoder_2 has no text_projection; SDXL needs a CLIPTextModelWithProjection.")

    # q, k, v -> one in_proj tensor, in that order (what OpenCLIP's nn.MultiheadAttention holds).
    for name, parts in fused.items():
        layer, kind = name.rsplit(".", 1)  # "encoder.layers.N", "weight" | "bias"
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise ValueError(f"text_encoder_2 {layer} lacks one of q/k/v {kind}s: has {sorted(parts)}.")
        index = layer.split(".")[2]
        merged = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
        out[f"{CLIP_G_PREFIX}transformer.resblocks.{index}.attn.in_proj_{kind}"] = merged
    return out


def sdxl_single_file_state_dict(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    text_encoder_2: torch.nn.Module,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The four diffusers/transformers components as one original-layout SDXL state dict.

    Works on any size (counts come from the configs) and on meta tensors, which lets the full
    SDXL key layout be checked without allocating weights. ``dtype`` casts floating tensors.
    """
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        raise ValueError(
            "unet.config.addition_embed_type is not 'text_time': this is not an SDXL UNet "
            "(SD 1.x/2.x UNets have no size-and-crop conditioning)."
        )
    result: dict[str, torch.Tensor] = {}
    result.update(_convert_module(unet.state_dict(), _unet_map(unet.config), UNET_PREFIX, "UNet", dtype))
    result.update(_convert_vae(vae, dtype))
    result.update(_convert_clip_l(text_encoder, dtype))
    result.update(_convert_clip_g(text_encoder_2, dtype))
    return result


def save_sdxl_single_file(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    text_encoder_2: torch.nn.Module,
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an SDXL single-file ``.safetensors`` checkpoint, atomically (temp file + rename).

    The file is what ComfyUI's "Load Checkpoint" and ``from_single_file`` read. Returns the path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = sdxl_single_file_state_dict(unet, vae, text_encoder, text_encoder_2, dtype=dtype)
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise ValueError(
            f"{len(meta)} weight(s) are on the meta device (never loaded), e.g. {meta[:3]}; "
            "load the components fully before saving them."
        )
    state = {k: v.cpu().contiguous() for k, v in state.items()}

    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    logger.info("Wrote SDXL single file %s (%d tensors)", path, len(state))
    return path
