"""Load Cradle2Cane: the files -> a ``C2C_MODEL`` handle whose models ComfyUI's memory manager owns."""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.v0_0_2 import io

from ..cradle2cane.runtime.precision import AUTO, PRECISIONS
from . import memory, models
from .common import pick
from .handles import C2CModel, ModelHandle

LOADER = "Load Cradle2Cane"
DEVICES = {"auto": mm.get_torch_device, "cpu": lambda: torch.device("cpu")}


def load(cradle2cane: str, base: str, precision: str, device: str, memory_mode: str) -> ModelHandle:
    """Read the files (onto the CPU, or the GPU under ``--gpu-only``) and hand the component groups
    to ComfyUI's memory manager, which moves them to ``device`` when a node needs them. ComfyUI's
    node cache keeps the handle while the loader's inputs stay the same, like a checkpoint."""
    from ..cradle2cane.pipeline import Cradle2Cane
    from ..cradle2cane.runtime.offload import set_vae_slicing_tiling
    from ..cradle2cane.runtime.precision import resolve_dtype

    models_root, c2c_dir = models.resolve_cradle2cane(cradle2cane)
    base_path = models.resolve_base(base, models_root)
    target = torch.device(pick(DEVICES, device, LOADER, "device")())
    pick(dict.fromkeys(memory.MEMORY_MODES), memory_mode, LOADER, "memory")
    try:
        dtype = resolve_dtype(precision, target)
    except ValueError as exc:
        raise ValueError(f"{LOADER}: precision: {exc}") from None
    model = Cradle2Cane.from_pretrained(models_root, base=base_path, cradle2cane_dir=c2c_dir, device="cpu",
                                        dtype=dtype)
    model.offload = memory.ComfyGroups(model, target, memory_mode)
    set_vae_slicing_tiling(model, memory_mode == memory.LOW_VRAM)
    return ModelHandle(model, models_root, model.offload, memory_mode)


class LoadCradle2Cane(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_LoadCradle2Cane",
            display_name=LOADER,
            category="cradle2cane/loaders",
            description="Loads the Cradle2Cane lifespan face aging models (identity LoRA, ArcFace, CLIP-L, "
                        "projectors) on top of an SDXL-Turbo base; every Cradle2Cane node takes the handle it "
                        "returns. ComfyUI's memory manager owns the models: it moves them to the GPU when a "
                        "Cradle2Cane node runs, unloads them when other models need the room, and 'Unload "
                        "models' releases them.",
            inputs=[
                io.Combo.Input("cradle2cane", options=models.cradle2cane_options(),
                               tooltip="Folder under models/cradle2cane holding pytorch_lora_weights.safetensors, "
                                       "face_project.bin, clip_project.bin and hparams.yml (the released "
                                       "'Cradle2Cane', or your own training run). backbone.pth, "
                                       "clip-vit-large-patch14/ and sdxl-vae-fp16-fix/ sit beside it."),
                io.Combo.Input("base", options=models.base_options(), default=models.BASE_AUTO,
                               tooltip="SDXL-Turbo base: 'auto' finds sdxl-turbo/ or sd_xl_turbo_1.0(_fp16)"
                                       ".safetensors in models/cradle2cane, models/checkpoints or models/diffusers; "
                                       "or pick a single file from models/checkpoints or a folder from "
                                       "models/diffusers."),
                io.Combo.Input("precision", options=[AUTO, *PRECISIONS], default=AUTO,
                               tooltip="Weights precision: auto = fp16 on a GPU, fp32 on the CPU."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="auto = ComfyUI's device (the GPU unless ComfyUI runs with --cpu)."),
                io.Combo.Input("memory", options=list(memory.MEMORY_MODES), default=memory.DEFAULT,
                               tooltip="default: ComfyUI loads all four model groups (text encoders, UNet, VAE, "
                                       "identity) together when a node runs, or one at a time when they do not "
                                       "fit or ComfyUI runs with --lowvram/--novram. model offload: always one "
                                       "group at a time (peak: the UNet, about 5 GB in fp16). low-vram: model "
                                       "offload plus VAE slicing/tiling."),
            ],
            outputs=[C2CModel.Output("model", display_name="model", tooltip="The loaded Cradle2Cane models.")],
        )

    @classmethod
    def validate_inputs(cls, cradle2cane: str | None = None, base: str | None = None) -> bool | str:
        """Refuse a crafted file choice when the prompt is queued (``None``: a linked input, checked
        when the node runs)."""
        for name, value, options in (("cradle2cane", cradle2cane, models.cradle2cane_options),
                                     ("base", base, models.base_options)):
            problem = value is not None and models.refusal(value, options, LOADER, name)
            if problem:
                return problem
        return True

    @classmethod
    def execute(cls, cradle2cane: str, base: str, precision: str, device: str, memory: str) -> io.NodeOutput:
        return io.NodeOutput(load(cradle2cane, base, precision, device, memory))
