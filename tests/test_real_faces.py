"""Faces in real photos, found by a real insightface SCRFD detector (``tests/real_faces.py``).

Every box, landmark and score here is the real detector's; age and gender estimates come from the
planted genderage model beside it (no registry ships a real one), so no test reads meaning into them.
The photos: the 1927 Solvay conference (29 people, a greyscale scan), Newton, Gauss, and
scikit-image's samples.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image

from cradle2cane.faces import align as A
from cradle2cane.faces import paste as P
from cradle2cane.faces.detect import FaceDetector, FaceTooSmallError, NoFaceError, select_faces
from cradle2cane.files.images import load_image
from cradle2cane.photo import age_photo

# The 29 people of the Solvay photo: the middle of each face, read off the photo by eye (to ~15 px).
PEOPLE = [(180, 1090), (280, 1200), (450, 1130), (510, 810), (590, 1210), (730, 880), (760, 1100), (880, 940),
          (900, 1200), (1090, 1100), (1130, 930), (1240, 1220), (1410, 950), (1450, 1080), (1630, 900),
          (1640, 1190), (1710, 1080), (1880, 910), (1910, 1190), (1990, 1100), (2130, 900), (2150, 1190),
          (2320, 1110), (2340, 890), (2500, 800), (2500, 1210), (2620, 1130), (2640, 890), (2730, 1250)]
GAUSS_FACE = (slice(201, 570), slice(377, 657))  # rows, columns of Gauss's face in gauss.png: a close-up crop
NEWTON_FACE_CENTRE = (386, 161)


@pytest.fixture(scope="module")
def detector(real_faces) -> FaceDetector:
    return FaceDetector(real_faces.pack, providers="cpu")


@pytest.fixture(scope="module")
def photos(real_faces) -> dict[str, np.ndarray]:
    return {name: load_image(path)[0] for name, path in real_faces.photos.items()}


@pytest.fixture(scope="module")
def group_faces(detector, photos):
    return detector.detect(photos["group"])


def centre(face) -> np.ndarray:
    return (face.bbox[:2] + face.bbox[2:]) / 2


def inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def assert_each_person_found_once(boxes, people):
    """Every person's face lies in exactly one box and no box holds two people; returns those boxes."""
    holders = [[i for i, box in enumerate(boxes) if inside(p, box)] for p in people]
    assert all(len(h) == 1 for h in holders), [(p, h) for p, h in zip(people, holders) if len(h) != 1]
    assert len({h[0] for h in holders}) == len(people)
    return {h[0] for h in holders}


# --------------------------------------------------------------------------- detection


def test_the_pack_runs_the_real_fixed_size_detector(detector):
    pack = detector._pack()
    assert pack.fixed_input == (640, 640)  # the export insightface can only run at 640x640
    assert pack.genderage is not None and type(pack.detector).__name__ == "SCRFD"


def test_every_face_of_the_group_photo_is_found_in_order(group_faces):
    faces = group_faces
    assert len(faces) == 29
    assert_each_person_found_once([f.bbox for f in faces], PEOPLE)
    assert [f.index for f in faces] == list(range(29))
    xs = [centre(f)[0] for f in faces]
    assert xs == sorted(xs)  # numbered left to right by box centre, whatever the row
    for face in faces:
        assert 0.5 <= face.score <= 1.0 and 60 < face.size < 110
        assert all(inside(p, face.bbox) for p in face.kps)
        eyes, nose, mouth = face.kps[:2], face.kps[2], face.kps[3:]
        assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min() and eyes[0, 0] < eyes[1, 0]


def test_largest_all_and_numbered_faces_of_real_photos(detector, photos, group_faces):
    group = photos["group"]
    assert detector.find(group, "largest")[0].index == max(group_faces, key=lambda f: f.area).index
    assert [f.index for f in detector.find(group, "all")] == list(range(29))
    assert detector.find(group, 5)[0].index == 5
    # Newton on the left, Gauss twice as tall on the right: largest is Gauss, not the first face.
    gauss = cv2.resize(photos["gauss"], None, fx=0.66, fy=0.66, interpolation=cv2.INTER_AREA)
    canvas = np.full((gauss.shape[0], 768 + gauss.shape[1], 3), 128, np.uint8)
    canvas[:432, :768] = photos["newton"]
    canvas[:, 768:] = gauss
    faces = detector.detect(canvas)
    assert len(faces) == 2 and inside(NEWTON_FACE_CENTRE, faces[0].bbox)
    largest = detector.find(canvas, "largest")[0]
    assert largest.index == 1 and largest.bbox[0] > 768 and largest.size > 1.5 * faces[0].size


def test_close_up_is_found_at_a_smaller_detector_size(detector, photos, caplog):
    close_up = np.ascontiguousarray(photos["gauss"][GAUSS_FACE])  # the face fills the frame
    with caplog.at_level(logging.INFO, logger="cradle2cane.faces.detect"):
        faces = detector.find(close_up)
    assert any("after none at 640" in r.getMessage() for r in caplog.records)  # SCRFD misses it at 640
    box = faces[0].bbox
    assert box[2] - box[0] > 0.8 * close_up.shape[1] and box[3] - box[1] > 0.8 * close_up.shape[0]
    # a 112 px face crop (the size face recognisers use) is found too
    x, y = NEWTON_FACE_CENTRE
    crop = cv2.resize(photos["newton"][y - 75:y + 75, x - 75:x + 75], (112, 112), interpolation=cv2.INTER_AREA)
    assert len(detector.find(crop)) == 1


def test_small_faces_are_found_and_refused(detector, photos):
    small = cv2.resize(photos["newton"], None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
    faces = detector.detect(small)
    assert len(faces) == 1 and faces[0].size < 32 and inside(np.array(NEWTON_FACE_CENTRE) * 0.2, faces[0].bbox)
    with pytest.raises(FaceTooSmallError, match="minimum 32px"):
        detector.find(small)
    assert select_faces(faces, "largest", min_face_size=8)[0] is faces[0]


@pytest.mark.parametrize("sample", ["chelsea", "coffee", "rocket"])
def test_photos_without_a_face(detector, sample):
    from skimage import data

    image = getattr(data, sample)()  # a cat, a cup of coffee, a rocket on its launch pad
    assert detector.detect(image) == []
    with pytest.raises(NoFaceError, match=f"no face found in {sample}.png"):
        detector.find(image, image_name=f"{sample}.png")


def test_grey_colour_and_odd_formats_find_the_same_face(detector, photos):
    from skimage import data

    newton = photos["newton"]
    reference = detector.detect(newton)
    assert len(reference) == 1 and inside(NEWTON_FACE_CENTRE, reference[0].bbox)
    grey = np.asarray(Image.fromarray(newton).convert("L"))
    variants = {"rgba": np.dstack([newton, np.full(newton.shape[:2], 255, np.uint8)]),
                "float": newton.astype(np.float32) / 255.0, "16 bit": newton.astype(np.uint16) * 257, "grey": grey}
    for name, variant in variants.items():
        faces = detector.detect(variant)
        tolerance = 4.0 if name == "grey" else 0.5  # grey is another picture; the others the same pixels
        assert len(faces) == 1, name
        np.testing.assert_allclose(faces[0].kps, reference[0].kps, atol=tolerance, err_msg=name)
    astronaut, camera = detector.detect(data.astronaut()), detector.detect(data.camera())  # colour, grey 2-D
    assert len(astronaut) == 1 and inside((225, 120), astronaut[0].bbox)
    assert len(camera) == 1 and inside((240, 160), camera[0].bbox)  # the cameraman's face


@pytest.mark.parametrize("orientation, turns", [(3, 2), (6, 1), (8, 3)])
def test_phone_photo_stored_sideways_is_found_upright(detector, photos, tmp_path, orientation, turns):
    newton = photos["newton"]
    upright = detector.detect(newton)[0]
    exif = Image.Exif()
    exif[0x0112] = orientation  # how to turn the stored pixels for display
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(newton, turns))).save(path, quality=95, exif=exif.tobytes())
    rgb, _ = load_image(path)
    assert rgb.shape == newton.shape
    faces = detector.find(rgb)
    np.testing.assert_allclose(faces[0].kps, upright.kps, atol=3.0)


def test_huge_photo_is_detected_on_a_downscaled_copy(detector, photos, caplog):
    gauss = photos["gauss"]
    huge = cv2.resize(gauss, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 4096x5220, 21 MP
    with caplog.at_level(logging.DEBUG, logger="cradle2cane.faces.detect"):
        faces = detector.find(huge)
    assert any("detecting at 502x640 (photo 4096x5220" in r.getMessage() for r in caplog.records)
    expected = (detector.detect(gauss)[0].bbox + 0.5) * 4 - 0.5
    np.testing.assert_allclose(faces[0].bbox, expected, atol=0.03 * (expected[2] - expected[0]))
    aligned = A.align_face(huge, faces[0], size=256)  # shrunk before warping: a 1100 px face to 256
    small = A.align_face(gauss, detector.detect(gauss)[0], size=256)
    assert np.abs(aligned.image - small.image).mean() < 0.03


def test_det_size_larger_than_the_fixed_input_is_covered_by_tiles(real_faces, photos):
    group = photos["group"]
    strip = np.concatenate([group, group[:, ::-1]], axis=1)  # 6000x2171: faces 9 px at 640
    width = group.shape[1]
    people = PEOPLE + [(width - 1 - x + width, y) for x, y in PEOPLE]
    few = FaceDetector(real_faces.pack, providers="cpu").detect(strip)
    assert len(few) < 58
    faces = FaceDetector(real_faces.pack, providers="cpu", det_size=1280).detect(strip)
    people_found = assert_each_person_found_once([f.bbox for f in faces], people)
    assert all(f.score < 0.6 for i, f in enumerate(faces) if i not in people_found)  # a stray near threshold


# --------------------------------------------------------------------------- paste back in a crowd


def _crop_radius(face: A.AlignedFace, shape) -> tuple[tuple[slice, slice], np.ndarray]:
    """Around the face (its quad's box): the region and each pixel's distance from the face's crop
    centre, in units of half the crop side (the masks end at 0.9, the default mask_scale)."""
    lo = np.maximum(np.floor(face.quad.min(axis=0)).astype(int) - 4, 0)
    hi = np.minimum(np.ceil(face.quad.max(axis=0)).astype(int) + 5, [shape[1], shape[0]])
    ys, xs = np.mgrid[lo[1]:hi[1], lo[0]:hi[0]].astype(np.float64)
    u, v = (face.matrix[i, 0] * xs + face.matrix[i, 1] * ys + face.matrix[i, 2] for i in (0, 1))
    centre = (face.size - 1) / 2
    return (slice(lo[1], hi[1]), slice(lo[0], hi[0])), np.hypot(u - centre, v - centre) / (face.size / 2)


def assert_each_pixel_goes_to_the_nearer_face(photo, aligned):
    """Paste one flat grey level per face: the result does not depend on the order of the faces, and
    where the masks of two faces overlap, a pixel clearly nearer to one face is what pasting that
    face alone gives (the neighbour's crop, whose rim holds a copy of this face, does not cover it)."""
    levels = [40 + 6 * i for i in range(len(aligned))]  # one grey level per face, told apart at a glance
    crops = [np.full((64, 64, 3), level / 255.0, np.float32) for level in levels]
    out = P.paste_back_many(photo, crops, aligned, color_match="none")
    assert np.array_equal(out, P.paste_back_many(photo, crops[::-1], aligned[::-1], color_match="none"))
    nearest = np.full(photo.shape[:2], -1)
    first, second = (np.full(photo.shape[:2], np.inf) for _ in range(2))  # the two smallest radii
    for k, face in enumerate(aligned):
        where, radius = _crop_radius(face, photo.shape)
        closer = radius < first[where]
        second[where] = np.where(closer, first[where], np.minimum(second[where], radius))
        first[where] = np.where(closer, radius, first[where])
        nearest[where] = np.where(closer, k, nearest[where])
    overlap = second < 0.9  # inside two faces' masks
    assert overlap.sum() > 1000  # the test means something: neighbours' masks do overlap
    clear = overlap & (np.subtract(second, first, out=np.zeros_like(first), where=overlap) > 0.1)
    for k in np.unique(nearest[clear]):
        alone = P.paste_back(photo, crops[k], aligned[k], color_match="none")
        mine = clear & (nearest == k)
        assert np.abs(out[mine].astype(int) - alone[mine]).max() <= 1, k
    return out


def test_neighbours_in_a_group_photo_keep_their_own_faces(photos, group_faces):
    group = photos["group"][700:1400]  # the rows of faces
    faces = [replace(f, bbox=f.bbox - [0, 700, 0, 700], kps=f.kps - [0, 700]) for f in group_faces]
    out = assert_each_pixel_goes_to_the_nearer_face(group, A.align_faces(group, faces, size=64))
    assert (out[..., 0] == out[..., 2]).all()  # a grey photo stays grey


def test_two_faces_cheek_to_cheek_keep_their_own_faces(detector, photos):
    half = photos["newton"][:, 300:440]  # Newton and his mirror image, boxes 4 px apart
    pair = np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))
    faces = detector.find(pair, "all")
    assert len(faces) == 2 and faces[1].bbox[0] - faces[0].bbox[2] < 10
    assert_each_pixel_goes_to_the_nearer_face(pair, A.align_faces(pair, faces, size=64))


def test_is_greyscale():
    from skimage import data

    grey = data.camera()
    as_jpeg = Image.fromarray(np.dstack([grey] * 3)).convert("RGB")
    buffer = io.BytesIO()
    as_jpeg.save(buffer, format="JPEG", quality=90)  # a colour JPEG of a grey photo: channels off by ~1
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    assert P.is_greyscale(grey) and P.is_greyscale(decoded) and P.is_greyscale(decoded.astype(np.float32) / 255)
    assert not P.is_greyscale(data.astronaut())


# --------------------------------------------------------------------------- whole photos


def test_every_face_of_the_group_is_aged_in_batches_and_the_rest_kept(tiny_model, detector, photos):
    group = photos["group"]
    batches = []
    def count(module, args, kwargs, output):
        batches.append(len(args[0] if args else kwargs["sample"]))

    hook = tiny_model.pipe.unet.register_forward_hook(count, with_kwargs=True)
    try:
        result = age_photo(tiny_model, group, [70], detector=detector, face="all", image_name="solvay.jpg")
    finally:
        hook.remove()
    assert [f.face_index for f in result.faces] == list(range(29)) and len(result.source_ages) == 29
    out = result.photos[0]
    assert out.shape == group.shape and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # grey in, grey out
    covered = np.zeros(group.shape[:2], bool)
    for face in result.faces:
        where, radius = _crop_radius(face, group.shape)
        covered[where] |= radius < 0.9 + 2 / face.size  # bilinear warping spreads the mask by a crop pixel
        x, y = np.round(face.kps[2]).astype(int)  # each nose changed
        assert np.abs(out[y - 3:y + 4, x - 3:x + 4].astype(int) - group[y - 3:y + 4, x - 3:x + 4]).max() > 0
    assert np.array_equal(out[~covered], group[~covered])  # the rest of the photo is bit-identical
    # 29 faces go through the UNet several at a time, not one by one
    assert sum(batches) >= 29 and sum(batches) / len(batches) >= 4, batches


def test_colour_photo_stays_colour_and_a_grey_one_grey(tiny_model, detector, photos):
    newton = photos["newton"]
    result = age_photo(tiny_model, newton, 60, detector=detector)
    changed = (result.photos[0] != newton).any(axis=2)
    assert changed.sum() > 1000
    colour = result.photos[0][changed].astype(int)
    assert np.abs(colour[:, 0] - colour[:, 2]).max() > 10  # the aged face has colour, as the photo does
    grey = np.asarray(Image.fromarray(newton).convert("L"))  # a 2-D grey photo comes back 2-D
    out = age_photo(tiny_model, grey, 60, detector=detector).photos[0]
    assert out.shape == grey.shape and (out != grey).sum() > 1000
