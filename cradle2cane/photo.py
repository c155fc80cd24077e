"""Whole photos: detect, align, estimate age and gender, age in two passes, paste back.

Shared by the command line and the ComfyUI all-in-one node, so both age a photo the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .faces.align import AlignedFace, align_faces
from .faces.paste import paste_back_many
from .faces.detect import DetectedFace, FaceDetector, NoFaceError, Which
from .faces.packs import find_insightface_pack
from .method.adani import check_strength
from .method.prompts import MAX_AGE, MIN_AGE, check_age, check_gender
from .method.sampler import StepCallback
from .method.seeds import check_seed

logger = logging.getLogger(__name__)


@dataclass
class PhotoAgingResult:
    """One output photo per target age, and what was found and used for each face."""

    photos: list[np.ndarray]  # same size, dtype and channels as the input photo
    target_ages: list[int]
    faces: list[AlignedFace]  # aligned crops are dropped (``without_image``) to keep this light
    source_ages: list[int]
    genders: list[str]
    estimated: list[tuple[int | None, str | None]] = field(default_factory=list)
    no_face: str | None = None  # with on_no_face="skip": why the photo came back unchanged


NO_FACE_MODES = ("error", "skip")


def _with_alpha(image: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is None:
        return image
    return np.concatenate([image, np.asarray(alpha, image.dtype)[..., None]], axis=2)


def estimate_or_given(faces: Sequence[AlignedFace], source_age: int | None, gender: str | None,
                      image_name: str = "photo") -> tuple[list[int], list[str]]:
    """Per-face source age and gender: the user's values win, the detector's estimate fills in."""
    ages, genders = [], []
    for face in faces:
        if source_age is not None:
            ages.append(check_age(source_age, "source age"))
        elif face.age is not None:
            ages.append(int(min(MAX_AGE, max(MIN_AGE, round(face.age)))))
        else:
            raise ValueError(f"{image_name}: the face pack has no age estimator (genderage model); "
                             "give the source age")
        if gender is not None:
            genders.append(check_gender(gender))
        elif face.gender is not None:
            genders.append(face.gender)
        else:
            raise ValueError(f"{image_name}: the face pack has no gender estimator (genderage model); give the gender")
    return ages, genders


def age_photo(model, photo: np.ndarray, target_ages: int | Sequence[int], *, detector: FaceDetector | None = None,
              models_dir: str | Path | None = None, source_age: int | None = None, gender: str | None = None,
              face: Which = "largest", seed: int = 0, strength: float | None = None,
              id_strength: float | None = None, alpha: np.ndarray | None = None,
              callback: StepCallback | None = None, det_size: int = 640, det_thresh: float = 0.5,
              feather: float = 0.1, mask_scale: float = 0.9, color_match: str = "mean",
              image_name: str = "photo", batch_size: int = 8, on_no_face: str = "error",
              detected: Sequence[DetectedFace] | None = None, reference_inference: bool = False) -> PhotoAgingResult:
    """Age the chosen face(s) of ``photo`` (HxWx3 RGB, uint8 or float 0..1) to each target age.

    Pixels outside the faces' blending masks are returned unchanged. ``alpha`` (HxW), when given,
    is attached to every output photo as a fourth channel. ``on_no_face``: ``error`` raises
    :class:`NoFaceError`; ``skip`` returns the photo unchanged for every age, with the reason in
    ``no_face`` (and a warning logged). ``detected``: faces already found in ``photo`` (e.g. by a
    caller that checks a whole batch before aging any of it); detection is then skipped.
    ``reference_inference``: see ``Cradle2Cane.__call__``.
    """
    import torch

    targets = [check_age(t, "target age") for t in (target_ages if isinstance(target_ages, (list, tuple))
                                                      else [target_ages])]
    # Every argument is checked before the detector loads or any work starts.
    if on_no_face not in NO_FACE_MODES:
        raise ValueError(f"on_no_face must be one of {NO_FACE_MODES}, got {on_no_face!r}")
    check_seed(seed)
    for value, what in ((strength, "strength"), (id_strength, "id_strength")):
        if value is not None:
            check_strength(value, model.settings.infer_step, what)
    if source_age is not None:
        check_age(source_age, "source age")
    if gender is not None:
        check_gender(gender)
    if detector is None and detected is None:
        if models_dir is None:
            raise ValueError("age_photo needs a detector or the models folder holding insightface/models/<pack>")
        detector = FaceDetector(find_insightface_pack(models_dir), det_size=det_size, det_thresh=det_thresh)
    try:
        if detected is None:
            detected = detector.find(photo, face, image_name=image_name)
        elif not detected:
            raise NoFaceError(f"{image_name}: no face given to age")
    except NoFaceError as exc:
        if on_no_face == "error":
            raise
        logger.warning("%s; passing the photo through unchanged", exc)
        unchanged = _with_alpha(np.array(photo, copy=True), alpha)
        return PhotoAgingResult(photos=[unchanged.copy() for _ in targets], target_ages=targets, faces=[],
                                source_ages=[], genders=[], no_face=str(exc))
    aligned = align_faces(photo, detected, size=model.resolution)
    ages, genders = estimate_or_given(aligned, source_age, gender, image_name)
    for f, a, g in zip(aligned, ages, genders):
        logger.info("%s: face %d at %s, source age %d, %s%s", image_name, f.face_index,
                    np.round(f.bbox).astype(int).tolist(), a, g,
                    "" if source_age is not None and gender is not None else " (estimated)")
    crops = torch.from_numpy(np.stack([f.image for f in aligned])).permute(0, 3, 1, 2).float()
    result = model(crops, targets, ages, genders, seed=seed, strength=strength, id_strength=id_strength,
                   callback=callback, batch_size=batch_size, reference_inference=reference_inference)
    per_age = len(targets)
    photos = []
    for j in range(per_age):
        aged = [result.images[b * per_age + j].permute(1, 2, 0).numpy() for b in range(len(aligned))]
        out = paste_back_many(photo, aged, aligned, feather=feather, mask_scale=mask_scale, color_match=color_match)
        photos.append(_with_alpha(out, alpha))
    return PhotoAgingResult(photos=photos, target_ages=targets, faces=[f.without_image() for f in aligned],
                            source_ages=ages, genders=genders, estimated=[(f.age, f.gender) for f in aligned])
