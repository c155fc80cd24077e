"""Load Cradle2Cane: the files -> a ``C2C_MODEL`` handle."""

from __future__ import annotations

from comfy_api.latest import io

from ..cradle2cane.runtime.precision import AUTO, PRECISIONS
from . import models
from .handles import C2CModel


class LoadCradle2Cane(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_LoadCradle2Cane",
            display_name="Load Cradle2Cane",
            category="cradle2cane/loaders",
            description="Loads the Cradle2Cane lifespan face aging models (identity LoRA, ArcFace, CLIP-L, "
                        "projectors) on top of an SDXL-Turbo base, once; every Cradle2Cane node takes the "
                        "handle it returns.",
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
                io.Combo.Input("device", options=list(models.DEVICES), default="auto",
                               tooltip="auto = ComfyUI's device (the GPU unless ComfyUI runs with --cpu)."),
                io.Combo.Input("memory", options=list(models.MEMORY), default="default",
                               tooltip="default: all models stay on the GPU (fastest). offload between runs: on the "
                                       "GPU while a Cradle2Cane node runs, on the CPU between runs (frees VRAM "
                                       "for other models). model offload: only the part that runs is on the GPU "
                                       "(about 5 GB in fp16). low-vram: model offload plus VAE slicing/tiling."),
            ],
            outputs=[C2CModel.Output("model", display_name="model", tooltip="The loaded Cradle2Cane models.")],
        )

    @classmethod
    def execute(cls, cradle2cane: str, base: str = models.BASE_AUTO, precision: str = "auto",
                device: str = "auto", memory: str = "default") -> io.NodeOutput:
        return io.NodeOutput(models.load(cradle2cane, base, precision, device, memory))
