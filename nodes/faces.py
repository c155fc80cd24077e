"""Face Align and Paste Face Back: photos <-> FFHQ-aligned crops (detection by insightface)."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import numpy as np
from comfy_api.latest import io

from . import models
from .handles import C2CFaces, FacesHandle, expect
from .layout import from_numpy, to_numpy
from .progress import check_cancel

logger = logging.getLogger(__name__)

FACE_ALIGN = "Face Align"
PASTE_BACK = "Paste Face Back"
WHICH = ["largest", "all", "index"]


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


def face_detector(pack: str, det_size: int, det_thresh: float):
    """The core's insightface facade on the pack from ``models/insightface`` (ONNX on the CPU when
    ComfyUI runs there)."""
    from ..cradle2cane.face import FaceDetector

    providers = "cpu" if mm.get_torch_device().type == "cpu" else "auto"
    return FaceDetector((models.insightface_root(pack), pack), providers=providers, det_size=det_size,
                        det_thresh=det_thresh)


def detect_and_align(images, detector: str, face: str, face_index: int, det_size: int, det_thresh: float,
                     size: int, node: str) -> tuple[list[np.ndarray], FacesHandle]:
    """Aligned crops (HxWx3 float) and the handle describing them, photo by photo."""
    from ..cradle2cane import face as F

    if face not in WHICH:
        raise ValueError(f"{node}: face must be one of {WHICH}, got {face!r}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{node}: 'image' must be a non-empty IMAGE batch [B,H,W,C], got {tuple(images.shape)}")
    finder = face_detector(detector, det_size, det_thresh)
    which = face_index if face == "index" else face
    crops, aligned, photo_index = [], [], []
    for p in range(images.shape[0]):
        check_cancel()
        photo = to_numpy(images[p])
        try:
            found = finder.find(photo, which, image_name=f"image {p} of the batch")
        except F.NoFaceError as exc:
            raise type(exc)(f"{node}: {exc}. In ComfyUI, an image that already is an aligned face crop can go "
                            f"straight to AdaNI First Pass (set source_age and gender there).",
                            image_name=exc.image_name, index=p) from exc
        for item in F.align_faces(photo, found, size):
            crops.append(item.image)
            aligned.append(item.without_image())
            photo_index.append(p)
    logger.info("%s: %d face(s) in %d image(s)", node, len(aligned), images.shape[0])
    return crops, FacesHandle(tuple(aligned), tuple(photo_index), int(images.shape[0]))


class FaceAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="C2C_FaceAlign",
            display_name=FACE_ALIGN,
            category="cradle2cane/face",
            description="Finds faces with insightface, estimates their age and gender, and cuts FFHQ-aligned "
                        "square crops (what Cradle2Cane was trained on). 'faces' remembers where each crop came "
                        "from, for Paste Face Back.",
            inputs=[
                io.Image.Input("image", tooltip="Photos; any batch size. Each must show at least one face."),
                *detector_inputs(),
                io.Int.Input("size", default=512, min=64, max=2048, step=64,
                             tooltip="Side of the aligned crops in pixels; Cradle2Cane works at 512."),
            ],
            outputs=[
                io.Image.Output("aligned", display_name="aligned", tooltip="One aligned crop per face, photo by photo."),
                C2CFaces.Output("faces", display_name="faces",
                                tooltip="Transforms, boxes and estimated age/gender of every crop."),
            ],
        )

    @classmethod
    def execute(cls, image, detector: str = "buffalo_l", face: str = "largest", face_index: int = 0,
                det_size: int = 640, det_thresh: float = 0.5, size: int = 512) -> io.NodeOutput:
        crops, faces = detect_and_align(image, detector, face, face_index, det_size, det_thresh, size, FACE_ALIGN)
        return io.NodeOutput(from_numpy(crops), faces)


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


def paste(images, faces: FacesHandle, aged, feather: float, mask_scale: float, color_match: str,
          node: str) -> list[np.ndarray]:
    """Photos with their faces replaced: photo by photo, then age by age."""
    from ..cradle2cane import face as F

    if images.shape[0] != faces.photo_count:
        raise ValueError(f"{node}: 'image' has {images.shape[0]} photos but 'faces' came from {faces.photo_count}; "
                         f"connect the same images that went into Face Align")
    count = len(faces)
    if aged.shape[0] % count:
        raise ValueError(f"{node}: {aged.shape[0]} aged faces for {count} aligned faces; the aged batch must hold "
                         f"every face at each age (faces x ages, as the aging nodes output it)")
    ages = aged.shape[0] // count
    out = []
    for p in range(images.shape[0]):
        mine = [i for i, q in enumerate(faces.photo_index) if q == p]
        photo = to_numpy(images[p])
        for j in range(ages):
            check_cancel()
            crops = [to_numpy(aged[i * ages + j]) for i in mine]
            out.append(F.paste_back_many(photo, crops, [faces.faces[i] for i in mine], feather=feather,
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
                        "several target ages per face you get one photo per age.",
            inputs=[
                io.Image.Input("image", tooltip="The original photos that went into Face Align."),
                C2CFaces.Input("faces", tooltip="Face Align's 'faces' output."),
                io.Image.Input("aged", tooltip="Aged crops: faces x ages, face by face (any aging node's output); "
                                               "their size may differ from the aligned size."),
                *paste_inputs(),
            ],
            outputs=[io.Image.Output("result", display_name="image",
                                     tooltip="Photos with aged faces: photo by photo, then age by age.")],
        )

    @classmethod
    def execute(cls, image, faces, aged, feather: float = 0.1, mask_scale: float = 0.9,
                color_match: str = "mean") -> io.NodeOutput:
        faces = expect(faces, FacesHandle, PASTE_BACK, "faces")
        return io.NodeOutput(from_numpy(paste(image, faces, aged, feather, mask_scale, color_match, PASTE_BACK)))
