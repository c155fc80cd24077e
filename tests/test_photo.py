"""Whole photos through the core: detect, align, estimate, age, paste back (CLI and API).

Faces are found by the real SCRFD detector on real photos (``tests/real_faces.py``); source age and
gender estimates come from the planted genderage model beside it.
"""

import numpy as np
import pytest
from PIL import Image

from cradle2cane.faces.detect import FaceDetector, NoFaceError
from cradle2cane.faces.paste import face_mask
from cradle2cane.files.images import load_image
from cradle2cane.photo import age_photo
from cradle2cane.tools.cli import main


@pytest.fixture(scope="module")
def detector(real_faces):
    return FaceDetector(real_faces.pack, providers="cpu")


@pytest.fixture(scope="module")
def newton(real_faces):
    return load_image(real_faces.photos["newton"])[0]


def _outside_masks(result, shape):
    """True where every face's blending mask is zero."""
    import cv2

    outside = np.ones(shape[:2], bool)
    for face in result.faces:
        mask = face_mask(face.size)
        back = cv2.warpAffine(mask, face.inverse_matrix, (shape[1], shape[0]), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        outside &= cv2.dilate((back > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) == 0  # a pixel of slack
    return outside


def test_one_face_aged_and_the_rest_unchanged(tiny_model, detector, newton):
    result = age_photo(tiny_model, newton, [70, 20], detector=detector, seed=3)
    assert len(result.photos) == 2 and result.target_ages == [70, 20]
    outside = _outside_masks(result, newton.shape)
    assert outside.mean() > 0.5
    for out in result.photos:
        assert out.shape == newton.shape and out.dtype == np.uint8
        assert np.array_equal(out[outside], newton[outside])
        assert (out != newton).any(axis=2).sum() > 500  # the face region did change
    assert not np.array_equal(result.photos[0], result.photos[1])
    # Estimated by the genderage model, reported back.
    assert result.estimated[0][0] is not None and result.source_ages == [result.estimated[0][0]]


def test_users_age_and_gender_win_over_the_estimate(tiny_model, detector, newton):
    result = age_photo(tiny_model, newton, 50, detector=detector, source_age=33, gender="female")
    assert result.source_ages == [33] and result.genders == ["female"]
    assert result.estimated[0][0] is not None and result.estimated[0][1] in ("male", "female")


def test_all_faces_or_one_by_number(tiny_model, detector, newton):
    half = newton[:, 200:560]  # Newton and his mirror image, 180 px apart
    pair = np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))
    result = age_photo(tiny_model, pair, 60, detector=detector, face="all")
    assert [f.face_index for f in result.faces] == [0, 1]
    assert result.faces[0].bbox[0] < result.faces[1].bbox[0]
    changed = (result.photos[0] != pair).any(axis=2)
    assert changed[:, :360].sum() > 500 and changed[:, 360:].sum() > 500
    only_second = age_photo(tiny_model, pair, 60, detector=detector, face=1)
    changed = (only_second.photos[0] != pair).any(axis=2)
    assert changed[:, :360].sum() == 0 and changed[:, 360:].sum() > 500


def test_no_face_names_the_image_and_what_to_try(tiny_model, detector):
    with pytest.raises(NoFaceError) as info:
        age_photo(tiny_model, np.zeros((200, 200, 3), np.uint8), 50, detector=detector, image_name="black.png")
    assert "black.png" in str(info.value) and "det_thresh" in str(info.value)


def test_alpha_is_kept(tiny_model, detector, newton):
    alpha = np.full(newton.shape[:2], 200, np.uint8)
    out = age_photo(tiny_model, newton, 50, detector=detector, alpha=alpha).photos[0]
    assert out.shape == (*newton.shape[:2], 4) and np.array_equal(out[..., 3], alpha)


def test_cli_on_a_photo_keeps_its_size(real_models, real_faces, newton, tmp_path, capsys):
    out = tmp_path / "newton_70.png"
    assert main(["age", str(real_faces.photos["newton"]), "--models", str(real_models), "--target-age", "70",
                 "--out", str(out)]) == 0
    aged = np.asarray(Image.open(out))
    assert aged.shape == newton.shape and (aged != newton).any()
    assert "face 0: source age" in capsys.readouterr().err
    from skimage import data

    cat = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(cat)
    assert main(["age", str(cat), "--models", str(real_models), "--target-age", "70", "--out",
                 str(tmp_path / "never.png"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no face" in err.lower() and "cat.png" in err
    assert not (tmp_path / "never.png").exists()


@pytest.mark.parametrize("stored_as", ["L", "RGB"])  # a grey file, and a grey picture kept in a colour file
def test_cli_gives_a_grey_photo_back_grey_in_the_file_kind_it_came_in(real_models, newton, tmp_path, stored_as):
    grey = tmp_path / "newton_grey.png"
    Image.fromarray(newton).convert("L").convert(stored_as).save(grey)
    out = tmp_path / "aged.png"
    assert main(["age", str(grey), "--models", str(real_models), "--target-age", "70", "--out", str(out),
                 "--quiet"]) == 0
    with Image.open(out) as aged:
        assert aged.mode == stored_as and aged.size == (newton.shape[1], newton.shape[0])
        pixels = np.asarray(aged.convert("RGB"))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert (pixels[..., 0] != np.asarray(Image.fromarray(newton).convert("L"))).sum() > 1000  # aged


def test_cli_ages_a_grey_aligned_face_to_grey(tiny_models, tmp_path):
    """--aligned skips detection: the aged crop is made grey as a pasted face is, in a strip too."""
    rng = np.random.default_rng(0)
    face = tmp_path / "face.png"
    Image.fromarray(rng.integers(60, 200, (128, 128), dtype=np.uint8)).save(face)
    common = ["--models", str(tiny_models), "--aligned", "--source-age", "30", "--gender", "female", "--quiet"]
    assert main(["age", str(face), "--target-age", "60", "--out", str(tmp_path / "aged.png"), *common]) == 0
    with Image.open(tmp_path / "aged.png") as aged:
        assert aged.mode == "L" and aged.size == (128, 128)
    assert main(["sweep", str(face), "--ages", "20,60", "--out", str(tmp_path / "strip.png"), *common]) == 0
    with Image.open(tmp_path / "strip.png") as strip:
        grid = np.asarray(strip.convert("RGB"))  # grey faces on white, labelled in grey ink
    assert (grid[..., 0] == grid[..., 1]).all() and (grid[..., 1] == grid[..., 2]).all()
    colour = tmp_path / "colour.png"
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(colour)
    assert main(["age", str(colour), "--target-age", "60", "--out", str(tmp_path / "c.png"), *common]) == 0
    with Image.open(tmp_path / "c.png") as aged:
        assert aged.mode == "RGB"


def test_skip_mode_passes_a_faceless_photo_through(tiny_model, detector, real_models, tmp_path, capsys):
    black = np.zeros((150, 200, 3), np.uint8)
    black[::7] = 30  # not flat, so "unchanged" means something
    result = age_photo(tiny_model, black, [20, 70], detector=detector, on_no_face="skip", image_name="b.png")
    assert len(result.photos) == 2 and all(np.array_equal(p, black) for p in result.photos)
    assert result.faces == [] and "b.png" in result.no_face
    with pytest.raises(ValueError, match="on_no_face"):
        age_photo(tiny_model, black, 20, detector=detector, on_no_face="ignore")
    src, out = tmp_path / "black.png", tmp_path / "out.png"
    Image.fromarray(black).save(src)
    assert main(["age", str(src), "--models", str(real_models), "--target-age", "70", "--out", str(out),
                 "--no-face", "skip", "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), black)
    assert "unchanged" in capsys.readouterr().err
