"""The face nodes on real photos with a real SCRFD detector (``tests/real_faces.py``), in-process.

The nodes run inside the stand-in ComfyUI of ``tests/test_nodes.py`` (its ``comfy`` fixture); the real
detector pack is linked into its ``models/insightface/models`` beside the planted ``buffalo_l``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_nodes import comfy, model, run  # noqa: F401  (fixtures: the in-process ComfyUI and tiny model)
from test_real_faces import PEOPLE, assert_each_person_found_once

REAL = "scrfd_2.5g"  # the real pack's name in the dropdown
HALF = 0.5  # the group photo at half size: faces of 37..47 px, all above the 32 px minimum


@pytest.fixture(scope="module")
def real_pack(comfy, real_faces):  # noqa: F811
    (comfy.base / "models" / "insightface" / "models" / REAL).symlink_to(real_faces.pack)
    return REAL


@pytest.fixture(scope="module")
def group(real_faces):
    """The Solvay photo at half size as a ComfyUI IMAGE [1,H,W,3] (grey: three equal channels)."""
    photo = Image.open(real_faces.photos["group"]).convert("RGB")
    photo = photo.resize((round(photo.width * HALF), round(photo.height * HALF)), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(photo, np.float32) / 255.0)[None]


def align(comfy, image, pack, face="all", face_index=0, **extra):  # noqa: F811
    return run(comfy, "C2C_FaceAlign", image=image, detector=pack, face=face, face_index=face_index,
               det_size=640, det_thresh=0.5, size=64, **extra)


def test_the_real_pack_is_offered(comfy, real_pack):  # noqa: F811
    assert real_pack in comfy.models.insightface_options()


def test_face_align_and_paste_back_every_face_of_the_group(comfy, real_pack, group):  # noqa: F811
    crops, faces, report = align(comfy, group, real_pack)
    assert crops.shape == (29, 64, 64, 3) and faces.photo_index == (0,) * 29
    assert report == "Face Align: 29 face(s) in 1 of 1 image(s)"
    people = [(x * HALF, y * HALF) for x, y in PEOPLE]
    boxes = [f.bbox for f in faces.faces]
    assert_each_person_found_once(boxes, people)
    assert [b[0] + b[2] for b in boxes] == sorted(b[0] + b[2] for b in boxes)  # left to right
    (_, largest, _) = align(comfy, group, real_pack, face="largest")
    assert largest.faces[0].bbox.tolist() == max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])).tolist()
    (_, last, _) = align(comfy, group, real_pack, face="index", face_index=28)
    assert last.faces[0].bbox.tolist() == boxes[28].tolist()
    # the crops pasted back unchanged: the photo comes back (up to warping there and back), still grey
    (out,) = run(comfy, "C2C_PasteFaceBack", image=group, faces=faces, aged=crops, feather=0.1, mask_scale=0.9,
                 color_match="none")
    assert out.shape == group.shape and (out[..., 0] == out[..., 2]).all()
    assert (out - group).abs().mean() < 2e-3 and torch.equal(out[:, :300], group[:, :300])  # above every face


def test_age_photo_ages_every_face_of_the_group(comfy, model, real_pack, group):  # noqa: F811
    out, report = run(comfy, "C2C_AgePhoto", model=model, image=group, target_ages="70", source_age=-1,
                      gender="auto", seed=0, detector=real_pack, face="all", face_index=0, det_size=640,
                      det_thresh=0.5, strength=0.0, id_strength=0.0, feather=0.1, mask_scale=0.9, color_match="mean",
                      no_face="error")
    assert report == "Cradle2Cane Age Photo: aged the face(s) of 1 of 1 image(s) to 70"
    assert out.shape == group.shape and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    _, faces, _ = align(comfy, group, real_pack)
    for face in faces.faces:
        x, y = np.round(face.kps[2]).astype(int)  # every nose changed
        assert (out[0, y - 2:y + 3, x - 2:x + 3] - group[0, y - 2:y + 3, x - 2:x + 3]).abs().max() > 0
    assert torch.equal(out[:, :300], group[:, :300]) and torch.equal(out[:, -300:], group[:, -300:])


def test_a_cat_has_no_face_in_the_nodes_either(comfy, model, real_pack):  # noqa: F811
    from skimage import data

    cat = torch.from_numpy(data.chelsea().astype(np.float32) / 255.0)[None]
    with pytest.raises(ValueError) as error:
        align(comfy, cat, real_pack)
    assert str(error.value).startswith("Face Align: no face found in image 0 of the batch")
    assert "no_face = skip" in str(error.value)
    out, report = run(comfy, "C2C_AgePhoto", model=model, image=cat, target_ages="70", source_age=-1,
                      gender="auto", seed=0, detector=real_pack, face="largest", face_index=0, det_size=640,
                      det_thresh=0.5, strength=0.0, id_strength=0.0, feather=0.1, mask_scale=0.9, color_match="mean",
                      no_face="skip")
    assert torch.equal(out, cat) and "image 0 skipped" in report
