"""Face Align and Paste Face Back: photos <-> FFHQ-aligned crops (detection by insightface)."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import numpy as np
import torch
from comfy_api.v0_0_2 import io, ui

from ..cradle2cane.photo import NO_FACE_MODES
from . import models
from .common import pick
from .handles import C2CFaces, FacesHandle, expect
from .layout import from_numpy, to_numpy
from .progress import check_cancel

logger = logging.getLogger(__name__)

FACE_ALIGN = "Face Align"
PASTE_BACK = "Paste Face Back"
WHICH = ["largest", "all", "index"]
NO_FACE_HINT = ("In ComfyUI: set no_face = skip to pass photos without a face through unchanged; an image that "
                "already is an aligned face crop can go straight to AdaNI First Pass (set source_age and gender "
                "there).")


def detector_inputs() -> list[io.Input]:
    return [
        io.Combo.Input("detector", options=models.insightface_options(),
                       tooltip="insightface pack in models/insightface/models (buffalo_l or antelopev2: SCRFD "
                               "detector + age/gender model)."),
        io.Combo.Input("face", options=WHICH, default="largest",
                       tooltip="Which face(s) of each photo: the largest, all (left to right), or the one "
                               "numbered face_index."),
        io.Int.Input("face_index", default=0, min=0, max=63,
                     tooltip="With face = index: the face number, 0 = leftmost."),
        io.Int.Input("det_size", default=640, min=160, max=2048, step=32,
                     tooltip="Detector input size: larger finds small faces in big photos, smaller finds "
                             "close-ups."),
        io.Float.Input("det_thresh", default=0.5, min=0.05, max=0.95, step=0.05,
                       tooltip="Detector score threshold: lower it when a face is missed."),
    ]


def no_face_input(skip: str) -> io.Input:
    """The no_face widget. It is the node's last input so that workflows saved before it existed keep
    their widget values in place (the frontend assigns them by position; a missing last one takes the
    default)."""
    return io.Combo.Input("no_face", options=list(NO_FACE_MODES), default="error",
                          tooltip="A photo without a usable face: error stops the run, naming the image and the "
                                  f"settings to try; skip {skip} The skipped images are logged and listed in "
                                  "'report'.")


def skips_no_face(no_face: str, node: str) -> bool:
    return pick({"error": False, "skip": True}, no_face, node, "no_face")


def validate_detector(detector: str | None) -> bool | str:
    """``validate_inputs`` of the nodes with a detector dropdown: a crafted pack name is refused
    when the prompt is queued (``None``: linked, checked when the node runs)."""
    return detector is None or models.refusal(detector, models.insightface_options, "Face detector",
                                              "detector") or True


def no_face_error(message: str, exc, index: int | None):
    """The core's :class:`NoFaceError` (which names the image and the detector settings to try) with
    what to change in ComfyUI added."""
    return type(exc)(f"{message}. {NO_FACE_HINT}", image_name=exc.image_name, index=index)


def skip_report(summary: str, skipped: list[tuple[int, str]], what: str) -> str:
    """The 'report' text: one summary line, then one line per skipped photo."""
    return "\n".join([summary, *(f"image {p} skipped ({what}): {reason}" for p, reason in skipped)])


def face_detector(pack: str, det_size: int, det_thresh: float):
    """The core's insightface facade on the pack from ``models/insightface`` (ONNX on the CPU when
    ComfyUI runs there)."""
    from ..cradle2cane.faces.detect import FaceDetector

    providers = "cpu" if mm.get_torch_device().type == "cpu" else "auto"
    return FaceDetector((models.insightface_root(pack), pack), providers=providers, det_size=det_size,
                        det_thresh=det_thresh)


def detect_and_align(images: torch.Tensor, detector: str, face: str, face_index: int, det_size: int,
                     det_thresh: float, size: int, node: str,
                     no_face: str) -> tuple[list[np.ndarray], FacesHandle, str]:
    """Aligned crops (HxWx3 float), the handle describing them and the report, photo by photo.

    With ``no_face="skip"`` a photo without a usable face gives no crop and is listed in the handle's
    ``skipped``; if that leaves no crop at all it is an error, since an IMAGE batch cannot be empty.
    """
    from ..cradle2cane.faces import align as A
    from ..cradle2cane.faces import detect as F

    skip = skips_no_face(no_face, node)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{node}: 'image' must be a non-empty IMAGE batch [B,H,W,C], got {tuple(images.shape)}")
    finder = face_detector(detector, det_size, det_thresh)
    which = face_index if face == "index" else face
    count = int(images.shape[0])
    crops, aligned, photo_index, skipped = [], [], [], []
    for p in range(count):
        check_cancel()
        photo = to_numpy(images[p])
        try:
            found = finder.find(photo, which, image_name=f"image {p} of the batch")
        except F.NoFaceError as exc:
            if not skip:
                raise no_face_error(f"{node}: {exc}", exc, p) from exc
            logger.warning("%s: no_face = skip: %s. Image %d gives no aligned crop; Paste Face Back returns it "
                           "unchanged", node, exc, p)
            skipped.append((p, str(exc)))
            continue
        for item in A.align_faces(photo, found, size):
            crops.append(item.image)
            aligned.append(item.without_image())
            photo_index.append(p)
    if not aligned:  # only reachable with skip: every photo was skipped
        first, reason = skipped[0]
        raise F.NoFaceError(
            f"{node}: no usable face in any of the {count} image(s), so there is nothing to align (no_face = skip "
            f"leaves photos without a face out, but the 'aligned' IMAGE batch cannot be empty). Image {first}: "
            f"{reason}. Images that already are aligned face crops can go straight to AdaNI First Pass (set "
            f"source_age and gender there).", image_name=f"image {first} of the batch", index=first)
    summary = f"{node}: {len(aligned)} face(s) in {count - len(skipped)} of {count} image(s)"
    logger.info("%s", summary)
    report = skip_report(summary, skipped, "no_face = skip: no aligned crop, Paste Face Back returns it unchanged")
    handle = FacesHandle(tuple(aligned), tuple(photo_index), count, tuple(p for p, _ in skipped))
    return crops, handle, report


class FaceAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_FaceAlign",
            display_name=FACE_ALIGN,
            category="cradle2cane/face",
            description="Finds faces with insightface, estimates their age and gender, and cuts FFHQ-aligned "
                        "square crops (what Cradle2Cane was trained on). 'faces' remembers where each crop came "
                        "from, for Paste Face Back. A photo without a face stops the run, or with no_face = skip is "
                        "left out (Paste Face Back returns it unchanged) and named in 'report'.",
            inputs=[
                io.Image.Input("image", tooltip="Photos; any batch size. Each should show at least one face "
                                                "(see no_face)."),
                *detector_inputs(),
                io.Int.Input("size", default=512, min=64, max=2048, step=64,
                             tooltip="Side of the aligned crops in pixels; Cradle2Cane works at 512."),
                no_face_input("leaves the photo out of 'aligned' and 'faces' records it, so Paste Face Back "
                              "returns it unchanged (at every age). If no photo of the batch has a face it is an "
                              "error in both modes: an empty IMAGE batch cannot flow on."),
            ],
            outputs=[
                io.Image.Output("aligned", display_name="aligned", tooltip="One aligned crop per face, photo by photo."),
                C2CFaces.Output("faces", display_name="faces",
                                tooltip="Transforms, boxes and estimated age/gender of every crop, and which photos "
                                        "were skipped."),
                io.String.Output("report", display_name="report",
                                 tooltip="How many faces were found in how many images, and each image skipped "
                                         "for having no face (no_face = skip) with the reason; connect "
                                         "Preview Any to read it on the canvas."),
            ],
        )

    @classmethod
    def validate_inputs(cls, detector: str | None = None) -> bool | str:
        return validate_detector(detector)

    @classmethod
    def execute(cls, image: torch.Tensor, detector: str, face: str, face_index: int, det_size: int,
                det_thresh: float, size: int, no_face: str) -> io.NodeOutput:
        crops, faces, report = detect_and_align(image, detector, face, face_index, det_size, det_thresh, size,
                                                FACE_ALIGN, no_face)
        return io.NodeOutput(from_numpy(crops), faces, report, ui=ui.PreviewText(report))


def paste_inputs() -> list[io.Input]:
    return [
        io.Float.Input("feather", default=0.1, min=0.0, max=0.45, step=0.01,
                       tooltip="Width of the soft edge of the round face mask, as a fraction of the crop."),
        io.Float.Input("mask_scale", default=0.9, min=0.1, max=1.0, step=0.01,
                       tooltip="Diameter of the face mask as a fraction of the crop; the crop's corners "
                               "(hair, background) never reach the photo."),
        io.Combo.Input("color_match", options=["mean", "mean_std", "none"], default="mean",
                       tooltip="Match the aged face's colours to the photo along the mask edge (mean: shift; "
                               "mean_std: shift and scale; none: as generated)."),
    ]


def paste(images: torch.Tensor, faces: FacesHandle, aged: torch.Tensor, feather: float, mask_scale: float,
          color_match: str, node: str) -> list[np.ndarray]:
    """Photos with their faces replaced: photo by photo, then age by age."""
    from ..cradle2cane.faces.paste import paste_back_many

    if images.shape[0] != faces.photo_count:
        raise ValueError(f"{node}: 'image' has {images.shape[0]} photos but 'faces' came from {faces.photo_count}; "
                         f"connect the same images that went into Face Align")
    count = len(faces)
    if aged.shape[0] % count:
        raise ValueError(f"{node}: {aged.shape[0]} aged faces for {count} aligned faces; the aged batch must hold "
                         f"every face at each age (faces x ages, as the aging nodes output it)")
    ages = aged.shape[0] // count
    if faces.skipped:
        logger.info("%s: image(s) %s had no face in Face Align (no_face = skip): returned unchanged", node,
                    ", ".join(map(str, faces.skipped)))
    out = []
    for p in range(images.shape[0]):
        mine = [i for i, q in enumerate(faces.photo_index) if q == p]
        photo = to_numpy(images[p])
        if not mine:  # skipped by Face Align: the photo itself at every age
            out.extend(photo.copy() for _ in range(ages))
            continue
        for j in range(ages):
            check_cancel()
            crops = [to_numpy(aged[i * ages + j]) for i in mine]
            out.append(paste_back_many(photo, crops, [faces.faces[i] for i in mine], feather=feather,
                                         mask_scale=mask_scale, color_match=color_match))
    return out


class PasteFaceBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_PasteFaceBack",
            display_name=PASTE_BACK,
            category="cradle2cane/face",
            description="Warps aged face crops back into the original photos (inverse of Face Align's "
                        "transform) under a soft round mask; pixels outside the mask stay untouched. With "
                        "several target ages per face you get one photo per age; photos Face Align skipped "
                        "(no face, no_face = skip) come back unchanged.",
            inputs=[
                io.Image.Input("image", tooltip="The original photos that went into Face Align."),
                C2CFaces.Input("faces", tooltip="Face Align's 'faces' output."),
                io.Image.Input("aged", tooltip="Aged crops: faces x ages, face by face (any aging node's output); "
                                               "their size may differ from the aligned size."),
                *paste_inputs(),
            ],
            outputs=[io.Image.Output("result", display_name="image",
                                     tooltip="Photos with aged faces: photo by photo, then age by age (a photo "
                                             "without a face: unchanged, once per age).")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, faces: FacesHandle, aged: torch.Tensor, feather: float, mask_scale: float,
                color_match: str) -> io.NodeOutput:
        faces = expect(faces, FacesHandle, PASTE_BACK, "faces")
        return io.NodeOutput(from_numpy(paste(image, faces, aged, feather, mask_scale, color_match, PASTE_BACK)))
