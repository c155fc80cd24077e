"""The planted insightface pack, FFHQ alignment, paste-back, image loading, pack lookup and loading.

The planted pack (``cradle2cane.testing.planted_faces``) runs through insightface's own router and
SCRFD post-processing; its detector finds blobs of skin colour (drawn with ``paint_face``), so only
the tests of the planted pack itself detect with it. How the face code behaves on real faces
(ordering, ``largest``, close-ups, small, huge and rotated photos, crowds) is tested with a real
detector in ``test_real_faces.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cradle2cane.faces import align as A
from cradle2cane.faces import paste as P
from cradle2cane.faces import detect as F
from cradle2cane.faces import packs
from cradle2cane.files import images as I
from cradle2cane.testing import planted_faces as T

BACKGROUND = (40, 60, 90)  # bluish grey: never skin


@pytest.fixture(scope="module")
def insightface_root(tmp_path_factory) -> Path:
    """An ``insightface`` root in the ComfyUI layout: ``<root>/models/buffalo_l``."""
    root = tmp_path_factory.mktemp("insightface")
    T.write_insightface_pack(root / "models" / "buffalo_l", seed=0)
    return root


@pytest.fixture(scope="module")
def detector(insightface_root) -> F.FaceDetector:
    return F.FaceDetector((insightface_root, "buffalo_l"), providers="cpu", det_size=640)


def photo(width: int = 640, height: int = 480, *faces, blur: float = 0.0) -> np.ndarray:
    """A plain photo with ``faces`` given as ((x, y), size[, colour])."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND
    for spec in faces:
        T.paint_face(image, *spec)
    if blur:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    return image


# --------------------------------------------------------------------------- the planted pack


@pytest.mark.filterwarnings("ignore::FutureWarning")  # insightface's own norm_crop on new scikit-image
def test_pack_is_deterministic_and_routed_by_insightface(tmp_path, insightface_root):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    T.write_insightface_pack(a, seed=0)
    T.write_insightface_pack(b, seed=0)
    T.write_insightface_pack(c, seed=1)
    names = sorted(p.name for p in a.glob("*.onnx"))
    assert names == ["det_10g.onnx", "genderage.onnx", "w600k_r50.onnx"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "w600k_r50.onnx").read_bytes() != (c / "w600k_r50.onnx").read_bytes()
    T.write_insightface_pack(tmp_path / "attributes", detector=False)  # for a real detector to join
    assert sorted(p.name for p in (tmp_path / "attributes").glob("*.onnx")) == names[1:]

    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name="buffalo_l", root=str(insightface_root), providers=["CPUExecutionProvider"])
    assert set(app.models) == {"detection", "genderage", "recognition"}
    app.prepare(ctx_id=0, det_size=(640, 640))
    image = photo(640, 480, ((320, 240), 150))
    found = app.get(np.ascontiguousarray(image[:, :, ::-1]))
    assert len(found) == 1
    assert 10 <= found[0].age <= 80 and found[0].embedding.shape == (512,)
    assert app.get(np.zeros((480, 640, 3), np.uint8)) == []


def test_planted_detector_reports_known_landmarks(detector):
    image = photo(640, 480, ((250, 230), 140), ((500, 200), 90, T.FEMALE_FACE_RGB))
    faces = detector.detect(image)
    assert len(faces) == 2
    for face, (c, size) in zip(faces, [((250, 230), 140), ((500, 200), 90)]):
        expected = T.expected_face(c, size)
        np.testing.assert_allclose(face.kps, expected["kps"], atol=2.0)
        np.testing.assert_allclose(face.bbox, expected["bbox"], atol=2.5)
        eyes_y, nose_y, mouth_y = face.kps[:2, 1].mean(), face.kps[2, 1], face.kps[3:, 1].mean()
        assert eyes_y < nose_y < mouth_y
        assert face.kps[0, 0] < face.kps[2, 0] < face.kps[1, 0]
        assert 0.5 < face.score <= 1.0
        assert 10 <= face.age <= 80
    assert [f.gender for f in faces] == ["male", "female"]
    # different photos give different detections
    moved = detector.detect(photo(640, 480, ((350, 260), 140)))
    assert len(moved) == 1 and not np.allclose(moved[0].kps, faces[0].kps, atol=5)


# --------------------------------------------------------------------------- alignment (pure)


def test_ffhq_quad_matches_hand_computed_values():
    # eye line dominates: x = (80, 0) scaled to 2 * |eye_to_eye| = 80, c = eye_avg + 0.1 * (0, 40)
    kps = np.array([[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]], float)
    np.testing.assert_allclose(A.ffhq_quad(kps), [[40, 24], [40, 184], [200, 184], [200, 24]])
    # eye-to-mouth dominates: scale 1.8 * 30 = 54, c = (5, 0) + (0, 3)
    kps = np.array([[0, 0], [10, 0], [5, 15], [0, 30], [10, 30]], float)
    np.testing.assert_allclose(A.ffhq_quad(kps), [[-49, -51], [-49, 57], [59, 57], [59, -51]])
    # a face turned by 90 degrees gives the turned quad
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])
    kps = np.array([[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]], float)
    np.testing.assert_allclose(A.ffhq_quad(kps @ turn.T), A.ffhq_quad(kps) @ turn.T, atol=1e-9)
    with pytest.raises(ValueError, match="5 finite"):
        A.ffhq_quad(np.zeros((4, 2)))


def test_quad_matrix_maps_quad_to_crop_corners():
    quad = np.array([[40, 24], [40, 184], [200, 184], [200, 24]], float)
    matrix = A.quad_matrix(quad, 512)
    corners = np.hstack([quad, np.ones((4, 1))]) @ matrix.T
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [-0.5, 511.5], [511.5, 511.5], [511.5, -0.5]], atol=1e-9)


def test_align_face_output_and_reflect_padding():
    image = np.empty((300, 400, 3), np.uint8)
    image[:] = (200, 210, 220)
    image[:, :200] = (150, 160, 170)
    kps = np.array([[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]], float)
    aligned = A.align_face(image, kps, size=128)
    assert aligned.image.shape == (128, 128, 3) and aligned.image.dtype == np.float32
    assert aligned.photo_size == (300, 400) and aligned.size == 128
    # a face in the corner: the quad leaves the photo, reflection fills it (no black)
    corner = A.align_face(image, kps - 95, size=128)
    assert corner.quad.min() < 0
    assert corner.image.min() > 0.5
    # a float grey photo works the same
    grey = A.align_face(image[:, :, 0].astype(np.float32) / 255.0, kps, size=64)
    assert grey.image.shape == (64, 64, 3)


# --------------------------------------------------------------------------- align -> paste


def _aligned_coordinates(face: A.AlignedFace, shape) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1)
    return points @ face.matrix.T  # photo pixel -> aligned pixel


def test_round_trip_is_lossless_outside_mask_and_close_inside():
    image = photo(640, 480, ((300, 250), 160), blur=6.0)
    aligned = A.align_face(image, T.expected_face((300, 250), 160)["kps"], size=512)
    out = P.paste_back(image, aligned.image, aligned)
    assert out.dtype == np.uint8 and out.shape == image.shape

    coords = _aligned_coordinates(aligned, image.shape)
    radius = np.hypot(coords[..., 0] - 255.5, coords[..., 1] - 255.5)
    outside = radius > 0.9 * 256 + 2
    assert np.array_equal(out[outside], image[outside])
    core = radius < 0.6 * 256
    error = np.abs(out.astype(int) - image.astype(int))[core]
    assert error.mean() < 0.6 and error.max() <= 4

    # an edited face does change the face, and only there
    aged = 1.0 - aligned.image
    changed = P.paste_back(image, aged, aligned, color_match="none")
    assert np.array_equal(changed[outside], image[outside])
    assert np.abs(changed.astype(int) - image.astype(int))[core].mean() > 50


def test_paste_back_float_rgba_resolution_and_colour_match():
    image = photo(400, 300, ((200, 150), 110), blur=3.0)
    aligned = A.align_face(image, T.expected_face((200, 150), 110)["kps"], size=256)
    coords = _aligned_coordinates(aligned, image.shape)
    radius = np.hypot(coords[..., 0] - 127.5, coords[..., 1] - 127.5)
    outside = radius > 0.9 * 128 + 2

    rgba = np.dstack([image, np.arange(300 * 400).reshape(300, 400) % 256]).astype(np.uint8)
    small = cv2.resize(aligned.image, (128, 128), interpolation=cv2.INTER_AREA)  # another resolution
    tinted = np.clip(small + np.array([0.0, 0.0, 0.2], np.float32), 0, 1)
    out = P.paste_back(rgba, tinted, aligned)
    assert out.shape == rgba.shape and np.array_equal(out[:, :, 3], rgba[:, :, 3])
    assert np.array_equal(out[outside], rgba[outside])
    # the default colour match removes a global tint measured at the seam
    untouched = P.paste_back(rgba, tinted, aligned, color_match="none")
    core = radius < 0.5 * 128
    blue_shift = lambda x: (x[:, :, 2].astype(float) - image[:, :, 2])[core].mean()  # noqa: E731
    assert blue_shift(untouched) > 45 and abs(blue_shift(out)) < 5

    floats = image.astype(np.float32) / 255.0
    out = P.paste_back(floats, aligned.image, aligned, mask_scale=0.8, feather=0.05, color_match="mean_std")
    assert out.dtype == np.float32 and out.max() <= 1.0
    assert np.array_equal(out[outside], floats[outside])
    with pytest.raises(ValueError, match="aligned from a 400x300 photo"):
        P.paste_back(image[:100], aligned.image, aligned)


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_astronaut_has_exactly_her_face_with_default_settings(insightface_root, encoding):
    """The CLI's and nodes' defaults (det_size=640, det_thresh=0.5) on the real photo: one face,
    hers, not a patch of the orange suit, a strap or a fragment of the face."""
    from skimage import data

    image = data.astronaut()
    if encoding == "jpeg":  # what a user loads: assets/astronaut.jpg is a JPEG of it
        ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        image = np.ascontiguousarray(cv2.imdecode(buffer, cv2.IMREAD_COLOR)[:, :, ::-1])
    default = F.FaceDetector((insightface_root, "buffalo_l"), providers="cpu")
    assert (default.det_size, default.det_thresh) == (640, 0.5)
    faces = default.detect(image)
    assert len(faces) == 1, [(f.bbox.round(), round(f.score, 3)) for f in faces]
    face = faces[0]
    np.testing.assert_allclose(face.bbox, [170, 62, 272, 183], atol=8)
    assert face.score > 0.8 and face.size > 80
    eyes, nose, mouth = face.kps[:2], face.kps[2], face.kps[3:]
    assert np.all((eyes[:, 1] > 92) & (eyes[:, 1] < 110))  # her eyes are at y ~ 102
    assert np.all((mouth[:, 1] > 135) & (mouth[:, 1] < 152))  # her mouth at y ~ 142
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
    assert eyes[0, 0] < nose[0] < eyes[1, 0] and mouth[0, 0] < nose[0] < mouth[1, 0]
    assert 190 < eyes[0, 0] < 212 and 230 < eyes[1, 0] < 252
    assert F.select_faces(faces, "largest")[0] is face
    # nothing else comes close to the threshold either
    wary = F.FaceDetector((insightface_root, "buffalo_l"), providers="cpu", det_thresh=0.35)
    assert len(wary.detect(image)) == 1


# --------------------------------------------------------------------------- hard photos


def test_no_face_raises_with_image_and_index(detector):
    with pytest.raises(F.NoFaceError) as caught:
        detector.find(np.zeros((480, 640, 3), np.uint8), image_name="holiday.jpg", index=3)
    error = caught.value
    assert isinstance(error, ValueError) and error.index == 3
    message = str(error)
    for part in ("holiday.jpg", "batch index 3", "det_thresh=0.5", "det_size", "--aligned"):
        assert part in message


@pytest.mark.parametrize("length, side", [(640, 640), (641, 640), (1280, 640), (6000, 640), (1000, 480)])
def test_tiles_cover_the_photo_and_share_every_face_once(length, side):
    starts = F._tile_starts(length, side)
    assert starts[0] == 0 and starts[-1] + side == max(length, side)
    overlaps = [a + side - b for a, b in zip(starts, starts[1:])]
    assert all(o >= F.TILE_OVERLAP * side for o in overlaps)
    centres = np.arange(0, length, 0.5)
    owners = np.stack([F._in_core(centres, starts, k, side) for k in range(len(starts))])
    assert (owners.sum(axis=0) == 1).all()  # every face centre belongs to exactly one tile
    small = F.TILE_OVERLAP * side / 2  # a face this far either side of its centre lies whole in its tile
    for k in range(len(starts)):
        mine = centres[owners[k]]
        assert (mine - small >= starts[k] - 1e-9).all() or k == 0
        assert (mine + small <= starts[k] + side + 1e-9).all() or k == len(starts) - 1


# --------------------------------------------------------------------------- loading images


def test_load_image_modes(tmp_path):
    from PIL import Image

    grey = (np.arange(30 * 20).reshape(20, 30) % 256).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    rgb, alpha = I.load_image(tmp_path / "grey.png")
    assert rgb.shape == (20, 30, 3) and alpha is None and np.array_equal(rgb[:, :, 1], grey)

    deep = (np.arange(30 * 20).reshape(20, 30) * 100).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    rgb, alpha = I.load_image(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and alpha is None
    assert np.abs(rgb[:, :, 0].astype(float) - deep / 257.0).max() <= 1.0

    colour = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(colour, "RGBA").save(tmp_path / "rgba.png")
    rgb, alpha = I.load_image(tmp_path / "rgba.png")
    assert np.array_equal(rgb, colour[:, :, :3]) and np.array_equal(alpha, colour[:, :, 3])

    palette = Image.fromarray(grey, "L").convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    rgb, alpha = I.load_image(tmp_path / "palette.png")
    assert rgb.shape == (20, 30, 3) and alpha is not None and alpha.min() == 0

    Image.fromarray(np.dstack([grey, grey]), "LA").save(tmp_path / "la.png")
    rgb, alpha = I.load_image(tmp_path / "la.png")
    assert rgb.shape == (20, 30, 3) and np.array_equal(alpha, grey)

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        I.load_image(tmp_path / "broken.jpg")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        I.load_image(tmp_path / "missing.png")


# --------------------------------------------------------------------------- packs, providers, cache


def test_pack_lookup_layouts_and_errors(tmp_path, insightface_root):
    assert packs.resolve_pack_dir((insightface_root, "buffalo_l")) == insightface_root / "models" / "buffalo_l"
    models = tmp_path / "models"
    T.write_insightface_pack(models / "insightface" / "models" / "antelopev2" / "antelopev2")  # zip nesting
    assert packs.find_insightface_pack(models) == models / "insightface" / "models" / "antelopev2" / "antelopev2"
    with pytest.raises(FileNotFoundError, match=r"buffalo_l.zip") as caught:
        F.FaceDetector((tmp_path / "nowhere", "buffalo_l"))
    assert str(tmp_path / "nowhere" / "models" / "buffalo_l") in str(caught.value)
    with pytest.raises(FileNotFoundError, match="insightface"):
        packs.find_insightface_pack(tmp_path / "empty")
    with pytest.raises(ValueError, match="multiple of 32"):
        F.FaceDetector((insightface_root, "buffalo_l"), det_size=500)


def test_providers_and_cache(insightface_root, tmp_path):
    import onnxruntime

    assert packs.resolve_providers("cpu") == ["CPUExecutionProvider"]
    auto = packs.resolve_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert auto == ["CPUExecutionProvider"]
        with pytest.raises(ValueError, match="onnxruntime"):
            packs.resolve_providers("cuda")
    with pytest.raises(ValueError, match="providers"):
        packs.resolve_providers("tpu")

    pack = (insightface_root, "buffalo_l")
    one = F.FaceDetector(pack, providers="cpu", det_size=320)
    two = F.FaceDetector(pack, providers="cpu", det_size=640, det_thresh=0.7)
    assert one._pack() is two._pack()  # one load, whatever the size and threshold
    assert one._pack().fixed_input is None  # the planted detector takes any input size
    for n in range(packs.CACHE_SIZE + 1):
        T.write_insightface_pack(tmp_path / str(n))
        F.FaceDetector(tmp_path / str(n), providers="cpu")._pack()
    assert len(packs._CACHE) == packs.CACHE_SIZE


def test_importing_the_core_stays_light():
    code = (
        "import sys; import cradle2cane.faces.detect, cradle2cane.faces.packs, cradle2cane.faces.align, cradle2cane.faces.paste, "
        "cradle2cane.testing.planted_faces; "
        "heavy = {'insightface', 'onnxruntime', 'cv2', 'onnx', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_missing_runtime_says_what_to_install(monkeypatch):
    import onnxruntime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime") as caught:
        packs.resolve_providers("auto")
    assert "onnxruntime-gpu" not in str(caught.value)
    monkeypatch.setitem(sys.modules, "onnxruntime", onnxruntime)
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.model_zoo", None)
    with pytest.raises(ImportError, match="pip install insightface"):
        packs._import_model_zoo()
