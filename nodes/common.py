"""Inputs several nodes share, and turning them into the core's per-face arguments."""

from __future__ import annotations

from comfy_api.latest import io

from .handles import C2CFaces, C2CModel, FacesHandle, ModelHandle, expect

GENDERS = ["auto", "male", "female"]
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def model_input() -> io.Input:
    return C2CModel.Input("model", tooltip="The handle from Load Cradle2Cane.")


def seed_input(default: int = 0) -> io.Input:
    return io.Int.Input("seed", default=default, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Noise seed; every face of the batch uses it, so one face aged to 70 alone "
                                "equals the 70 of a sweep.")


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
    """Per-face source ages and genders from the widgets, or from Face Align's estimates."""
    if faces is not None:
        faces = expect(faces, FacesHandle, node, "faces")
        if len(faces) != count:
            raise ValueError(f"{node}: 'faces' describes {len(faces)} faces but the image batch has {count}; "
                             f"connect the aligned IMAGE and the faces output of the same Face Align node")
    if gender not in GENDERS:
        raise ValueError(f"{node}: gender must be one of {GENDERS}, got {gender!r}")

    def estimates(attribute: str, widget: str) -> list:
        if faces is None:
            raise ValueError(f"{node}: {widget} is set to estimate, but no Face Align 'faces' is connected: "
                             f"connect it, or set {widget} on the node")
        values = [getattr(face, attribute) for face in faces.faces]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise ValueError(f"{node}: the face pack gave no {attribute} estimate for face(s) {missing} (it has no "
                             f"genderage model); set {widget} on the node")
        return values

    ages = [int(source_age)] * count if source_age >= 0 else estimates("age", "source_age")
    genders = [gender] * count if gender != "auto" else estimates("gender", "gender")
    return ages, genders


def model_handle(value, node: str) -> ModelHandle:
    return expect(value, ModelHandle, node, "model")
