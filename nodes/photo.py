"""Cradle2Cane Age Photo: detect, align, both passes and paste back in one node (``cradle2cane.photo``)."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io, ui

from .aging import target_ages_input
from .common import GENDERS, model_handle, model_input, reference_inference_input, seed_input
from .faces import (detector_inputs, face_detector, no_face_error, no_face_input, paste_inputs, skip_report,
                    validate_detector)
from .handles import ModelHandle
from .layout import from_numpy, optional_value, parse_ages, to_numpy
from .progress import check_cancel, step_callback

AGE_PHOTO = "Cradle2Cane Age Photo"


class AgePhoto(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_AgePhoto",
            display_name=AGE_PHOTO,
            category="cradle2cane",
            description="All in one: finds the face(s) in each photo, ages them to every target age with both "
                        "Cradle2Cane passes and pastes them back (what the command line does). The same as Face "
                        "Align -> AdaNI First Pass -> Identity Embed -> Identity Second Pass -> Paste Face Back "
                        "with default settings. A photo without a face stops the run, or with no_face = skip "
                        "comes back unchanged at every age and is named in 'report'.",
            inputs=[
                model_input(),
                io.Image.Input("image", tooltip="Photos; any batch size. Each should show at least one face "
                                                "(see no_face)."),
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
                no_face_input("returns the photo unchanged at every target age (the output keeps photos x ages "
                              "images in batch order)."),
                reference_inference_input(),
            ],
            outputs=[
                io.Image.Output("result", display_name="image",
                                tooltip="Aged photos: photo by photo, then age by age."),
                io.String.Output("report", display_name="report",
                                 tooltip="How many images were aged to which ages, and each image returned "
                                         "unchanged for having no face (no_face = skip) with the reason; connect "
                                         "Preview Any to read it on the canvas."),
            ],
        )

    @classmethod
    def validate_inputs(cls, detector: str | None = None) -> bool | str:
        return validate_detector(detector)

    @classmethod
    def execute(cls, model: ModelHandle, image: torch.Tensor, target_ages: str, source_age: int, gender: str,
                seed: int, detector: str, face: str, face_index: int, det_size: int, det_thresh: float,
                strength: float, id_strength: float, feather: float, mask_scale: float, color_match: str,
                no_face: str, reference_inference: bool | None = None) -> io.NodeOutput:
        from ..cradle2cane.faces.detect import NoFaceError
        from ..cradle2cane.photo import age_photo

        handle = model_handle(model, AGE_PHOTO)
        targets = parse_ages(target_ages, AGE_PHOTO)
        finder = face_detector(detector, det_size, det_thresh)
        count = image.shape[0]
        progress = step_callback()
        photos, skipped = [], []
        names = [f"{AGE_PHOTO}: image {p} of the batch" for p in range(count)]
        which = face_index if face == "index" else face
        detected: list = [None] * count
        if no_face == "error":  # find every face first: a faceless image fails before any aging
            for p in range(count):
                check_cancel()
                try:
                    detected[p] = finder.find(to_numpy(image[p]), which, image_name=names[p], index=p)
                except NoFaceError as exc:
                    raise no_face_error(str(exc), exc, p) from exc
        core = handle.ready()
        for p in range(count):
            check_cancel()
            result = age_photo(
                core, to_numpy(image[p]), targets, detector=finder, detected=detected[p],
                source_age=None if source_age < 0 else source_age,
                gender=None if gender == "auto" else gender, face=which,
                seed=seed, strength=optional_value(strength), id_strength=optional_value(id_strength),
                feather=feather, mask_scale=mask_scale, color_match=color_match,
                image_name=names[p], on_no_face=no_face, reference_inference=bool(reference_inference),
                callback=lambda step, total, p=p: progress(p * total + step, count * total))
            if result.no_face is not None:  # the core logged the warning, naming the image
                skipped.append((p, result.no_face))
            photos.extend(result.photos)
        ages = ", ".join(str(a) for a in targets)
        report = skip_report(f"{AGE_PHOTO}: aged the face(s) of {count - len(skipped)} of {count} image(s) to "
                             f"{ages}", skipped, "no_face = skip: returned unchanged at every age")
        return io.NodeOutput(from_numpy(photos), report, ui=ui.PreviewText(report))
