"""Whole photos through the core: detect, align, estimate, age, paste back (CLI and API)."""

import numpy as np
import pytest
from PIL import Image

from cradle2cane.tools.cli import main
from cradle2cane.faces.paste import face_mask
from cradle2cane.faces.detect import FaceDetector, NoFaceError
from cradle2cane.faces.packs import find_insightface_pack
from cradle2cane.photo import age_photo
from cradle2cane.testing.planted_faces import FEMALE_FACE_RGB, paint_face

BACKGROUND = (40, 60, 90)


def _photo(centres, size=90, shape=(300, 420), colours=None):
    image = np.empty((*shape, 3), np.uint8)
    image[:] = BACKGROUND
    # Texture outside the faces, so "unchanged" is checked on varied pixels, not a flat colour.
    rng = np.random.default_rng(0)
    image[: shape[0] // 6] = rng.integers(0, 60, (shape[0] // 6, shape[1], 3), dtype=np.uint8)
    for i, c in enumerate(centres):
        paint_face(image, c, size, colours[i] if colours else (225, 180, 150))
    return image


@pytest.fixture(scope="module")
def detector(tiny_models):
    return FaceDetector(find_insightface_pack(tiny_models))


def _outside_masks(result, shape):
    """True where every face's blending mask is zero."""
    import cv2

    outside = np.ones(shape[:2], bool)
    for face in result.faces:
        mask = face_mask(face.size)
        back = cv2.warpAffine(mask, face.inverse_matrix, (shape[1], shape[0]), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        outside &= back <= 0
    return outside


def test_one_face_aged_and_the_rest_unchanged(tiny_model, detector):
    photo = _photo([(210, 150)])
    result = age_photo(tiny_model, photo, [70, 20], detector=detector, seed=3)
    assert len(result.photos) == 2 and result.target_ages == [70, 20]
    for out in result.photos:
        assert out.shape == photo.shape and out.dtype == np.uint8
        outside = _outside_masks(result, photo.shape)
        assert outside.mean() > 0.5
        assert np.array_equal(out[outside], photo[outside])
        assert (out != photo).any(axis=2).sum() > 500  # the face region did change
    # Estimated by the genderage model, reported back.
    assert result.estimated[0][0] is not None and result.source_ages == [result.estimated[0][0]]


def test_users_age_and_gender_win_over_the_estimate(tiny_model, detector):
    photo = _photo([(210, 150)])
    result = age_photo(tiny_model, photo, 50, detector=detector, source_age=33, gender="female")
    assert result.source_ages == [33] and result.genders == ["female"]
    assert result.estimated[0][1] == "male"  # the planted estimator's view of this skin colour


def test_all_faces_are_aged_into_one_photo_in_left_to_right_order(tiny_model, detector):
    photo = _photo([(320, 150), (100, 150)], size=80, colours=[FEMALE_FACE_RGB, (225, 180, 150)])
    result = age_photo(tiny_model, photo, 60, detector=detector, face="all")
    assert [f.face_index for f in result.faces] == [0, 1]
    assert result.faces[0].bbox[0] < result.faces[1].bbox[0]
    assert result.genders == ["male", "female"]
    changed = (result.photos[0] != photo).any(axis=2)
    assert changed[:, :210].sum() > 300 and changed[:, 210:].sum() > 300
    only_second = age_photo(tiny_model, photo, 60, detector=detector, face=1)
    changed = (only_second.photos[0] != photo).any(axis=2)
    assert changed[:, :210].sum() == 0 and changed[:, 210:].sum() > 300


def test_no_face_names_the_image_and_what_to_try(tiny_model, detector):
    with pytest.raises(NoFaceError) as info:
        age_photo(tiny_model, np.zeros((200, 200, 3), np.uint8), 50, detector=detector, image_name="black.png")
    assert "black.png" in str(info.value) and "det_thresh" in str(info.value)


def test_alpha_is_kept(tiny_model, detector):
    photo = _photo([(210, 150)])
    alpha = np.full(photo.shape[:2], 200, np.uint8)
    out = age_photo(tiny_model, photo, 50, detector=detector, alpha=alpha).photos[0]
    assert out.shape == (*photo.shape[:2], 4) and np.array_equal(out[..., 3], alpha)


def test_cli_on_a_photo_keeps_its_size(tiny_models, tmp_path, capsys):
    src = tmp_path / "people.png"
    photo = _photo([(210, 150)])
    Image.fromarray(photo).save(src)
    out = tmp_path / "people_70.png"
    assert main(["age", str(src), "--models", str(tiny_models), "--target-age", "70", "--out", str(out),
                 "--quiet"]) == 0
    aged = np.asarray(Image.open(out))
    assert aged.shape == photo.shape and (aged != photo).any()
    assert "face 0: source age" in capsys.readouterr().err
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(black)
    assert main(["age", str(black), "--models", str(tiny_models), "--target-age", "70", "--out",
                 str(tmp_path / "never.png"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no face" in err.lower() and "black.png" in err
    assert not (tmp_path / "never.png").exists()


def test_skip_mode_passes_a_faceless_photo_through(tiny_model, detector, tiny_models, tmp_path, capsys):
    black = np.zeros((150, 200, 3), np.uint8)
    black[::7] = 30  # not flat, so "unchanged" means something
    result = age_photo(tiny_model, black, [20, 70], detector=detector, on_no_face="skip", image_name="b.png")
    assert len(result.photos) == 2 and all(np.array_equal(p, black) for p in result.photos)
    assert result.faces == [] and "b.png" in result.no_face
    with pytest.raises(ValueError, match="on_no_face"):
        age_photo(tiny_model, black, 20, detector=detector, on_no_face="ignore")
    src, out = tmp_path / "black.png", tmp_path / "out.png"
    Image.fromarray(black).save(src)
    assert main(["age", str(src), "--models", str(tiny_models), "--target-age", "70", "--out", str(out),
                 "--no-face", "skip", "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), black)
    assert "unchanged" in capsys.readouterr().err
