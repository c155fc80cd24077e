"""Cradle2Cane Age Photo: detect, align, both passes and paste back in one node."""

from __future__ import annotations

from comfy_api.latest import io

from .aging import target_ages_input
from .common import GENDERS, model_handle, model_input, seed_input, source_attributes
from .faces import detect_and_align, detector_inputs, paste, paste_inputs
from .layout import from_numpy, optional_value, parse_ages, to_comfy, to_core
from .models import running
from .progress import step_callback

AGE_PHOTO = "Cradle2Cane Age Photo"


class AgePhoto(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_AgePhoto",
            display_name=AGE_PHOTO,
            category="cradle2cane",
            description="All in one: finds the face(s) in each photo, ages them to every target age with both "
                        "Cradle2Cane passes and pastes them back. The same as Face Align -> AdaNI First Pass -> "
                        "Identity Embed -> Identity Second Pass -> Paste Face Back with default settings.",
            inputs=[
                model_input(),
                io.Image.Input("image", tooltip="Photos; any batch size. Each must show at least one face."),
                target_ages_input(),
                io.Int.Input("source_age", default=-1, min=-1, max=100,
                             tooltip="Age of the person in years; -1 = estimate it from the photo."),
                io.Combo.Input("gender", options=GENDERS, default="auto",
                               tooltip="Gender for the aging prompt; auto = estimate it from the photo."),
                seed_input(),
                *detector_inputs(),
                io.Float.Input("strength", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Pass-1 strength; 0 = adaptive (AdaNI, from the age gap)."),
                io.Float.Input("id_strength", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Identity pass strength; 0 = hparams.yml (released: 0.25)."),
                *paste_inputs(),
            ],
            outputs=[io.Image.Output("result", display_name="image",
                                     tooltip="Aged photos: photo by photo, then age by age."),
                     io.Image.Output("aged_faces", display_name="faces", tooltip="The aged face crops: faces x ages.")],
        )

    @classmethod
    def execute(cls, model, image, target_ages: str = "70", source_age: int = -1, gender: str = "auto",
                seed: int = 0, detector: str = "buffalo_l", face: str = "largest", face_index: int = 0,
                det_size: int = 640, det_thresh: float = 0.5, strength: float = 0.0, id_strength: float = 0.0,
                feather: float = 0.1, mask_scale: float = 0.9, color_match: str = "mean") -> io.NodeOutput:
        handle = model_handle(model, AGE_PHOTO)
        targets = parse_ages(target_ages, AGE_PHOTO)
        crops, faces = detect_and_align(image, detector, face, face_index, det_size, det_thresh,
                                        handle.model.resolution, AGE_PHOTO)
        sources, genders = source_attributes(len(faces), source_age, gender, faces, AGE_PHOTO)
        with running(handle) as core:
            result = core(to_core(from_numpy(crops), AGE_PHOTO, "image"), targets, sources, genders, seed=seed,
                          strength=optional_value(strength), id_strength=optional_value(id_strength),
                          callback=step_callback())
        aged = to_comfy(result.images)
        photos = paste(image, faces, aged, feather, mask_scale, color_match, AGE_PHOTO)
        return io.NodeOutput(from_numpy(photos), aged)
