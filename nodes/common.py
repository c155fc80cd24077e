"""Inputs several nodes share, and turning them into the core's per-face arguments."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from .handles import C2CFaces, C2CModel, FacesHandle, ModelHandle, expect

GENDERS = ["auto", "male", "female"]
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def model_input() -> io.Input:
    return C2CModel.Input("model", tooltip="The handle from Load Cradle2Cane.")


def seed_input(default: int = 0) -> io.Input:
    return io.Int.Input("seed", default=default, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Noise seed; every face of the batch uses it, so one face aged to 70 alone "
                                "equals the 70 of a sweep.")


def reference_inference_input() -> io.Input:
    return io.Boolean.Input("reference_inference", default=False, optional=True,
                            tooltip="Reproduce the reference inference script (8-bit aged image, PIL-resized "
                                    "ArcFace input, CLIP fed 0..255 pixels), to compare with the published images. "
                                    "Off = what the model was trained with.")


def source_inputs() -> list[io.Input]:
    return [
        io.Int.Input("source_age", default=-1, min=-1, max=100,
                     tooltip="Age of the input face in years; -1 = the estimate from Face Align's faces "
                             "(connect 'faces')."),
        io.Combo.Input("gender", options=GENDERS, default="auto",
                       tooltip="Gender for the aging prompt; auto = the estimate from Face Align's faces."),
        C2CFaces.Input("faces", optional=True,
                       tooltip="Face Align's faces: gives each face's estimated age and gender when "
                               "source_age is -1 / gender is auto."),
    ]


def source_attributes(count: int, source_age: int, gender: str, faces: FacesHandle | None,
                      node: str) -> tuple[list[int], list[str]]:
    """Per-face source ages and genders: the widgets win, Face Align's estimates fill in."""
    from ..cradle2cane.photo import estimate_or_given

    if faces is None:
        if source_age < 0 or gender == "auto":
            raise ValueError(f"{node}: source_age is -1 or gender is auto (estimate), but no Face Align 'faces' "
                             f"is connected: connect it, or set source_age and gender on the node")
        return [int(source_age)] * count, [gender] * count
    faces = expect(faces, FacesHandle, node, "faces")
    if len(faces) != count:
        raise ValueError(f"{node}: 'faces' describes {len(faces)} faces but the image batch has {count}; "
                         f"connect the aligned IMAGE and the faces output of the same Face Align node")
    return estimate_or_given(faces.faces, None if source_age < 0 else source_age,
                             None if gender == "auto" else gender, image_name=node)


def pick(mapping: dict, value: str, node: str, input_name: str):
    """What a dropdown value means. Current ComfyUI refuses a value outside the options before the
    node runs; 0.3.64 does not check ``io.Combo`` values, so a crafted prompt gets this message."""
    try:
        return mapping[value]
    except (KeyError, TypeError):
        raise ValueError(f"{node}: {input_name} must be one of {list(mapping)}, got {value!r}") from None


def model_handle(value, node: str) -> ModelHandle:
    return expect(value, ModelHandle, node, "model")
