"""Lifespan Sweep: one face, many ages, one IMAGE batch (for ComfyUI's image and animation savers)."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from .common import (model_handle, model_input, reference_inference_input, seed_input, source_attributes,
                     source_inputs)
from .handles import FacesHandle, ModelHandle
from .layout import optional_value, parse_ages, sweep_ages, to_comfy, to_core
from .progress import step_callback

SWEEP = "Lifespan Sweep"


class LifespanSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_LifespanSweep",
            display_name=SWEEP,
            category="cradle2cane/aging",
            description="Both Cradle2Cane passes for a series of target ages in one run (each input face is "
                        "encoded once). The batch goes face by face, ages in order: ready for Save Animated "
                        "WEBP/PNG, or for Paste Face Back.",
            inputs=[
                model_input(),
                io.Image.Input("image", tooltip="Aligned face crops (Face Align's 'aligned' output); any batch size."),
                io.Int.Input("start_age", default=10, min=0, max=100, tooltip="First target age in years."),
                io.Int.Input("end_age", default=80, min=0, max=100,
                             tooltip="Last target age (included when the step lands on it); below start_age "
                                     "the sweep runs backwards."),
                io.Int.Input("step", default=10, min=1, max=100, tooltip="Years between frames."),
                io.String.Input("ages", default="", optional=True,
                                tooltip="Optional explicit list ('5, 20, 45, 80' or '10-80:5'); when not empty it "
                                        "replaces start/end/step."),
                *source_inputs(),
                seed_input(),
                io.Float.Input("id_strength", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Identity pass strength; 0 = hparams.yml (released: 0.25)."),
                reference_inference_input(),
            ],
            outputs=[
                io.Image.Output("images", display_name="images", tooltip="Faces x ages, face by face, ages in order."),
                io.String.Output("age_list", display_name="ages", tooltip="The target ages of one face's frames, comma separated."),
            ],
        )

    @classmethod
    def execute(cls, model: ModelHandle, image: torch.Tensor, start_age: int, end_age: int, step: int,
                source_age: int, gender: str, seed: int, id_strength: float, ages: str | None = None,
                faces: FacesHandle | None = None, reference_inference: bool | None = None) -> io.NodeOutput:
        handle = model_handle(model, SWEEP)
        batch = to_core(image, SWEEP, "image")
        targets = parse_ages(ages, SWEEP, "ages") if ages and ages.strip() else \
            sweep_ages(start_age, end_age, step, SWEEP)
        sources, genders = source_attributes(batch.shape[0], source_age, gender, faces, SWEEP)
        result = handle.ready()(batch, targets, sources, genders, seed=seed, id_strength=optional_value(id_strength),
                                callback=step_callback(), reference_inference=bool(reference_inference))
        return io.NodeOutput(to_comfy(result.images), ", ".join(str(a) for a in targets))
