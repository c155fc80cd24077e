"""A tiny, *planted* insightface model pack for tests and demos: a stand-in, not a face detector.

Its detector finds blobs of skin colour, not faces: on real photos it finds
hands, walls and cats and misses grey portraits, so real results need a real
pack (``buffalo_l``, ``antelopev2``; the tests also use a real SCRFD fetched
from PyPI).  What it offers is the real code path: the face code runs through
insightface's own model router, detector post-processing (anchors, NMS) and
attribute model exactly as with real weights.  There is no real genderage
model on any package registry, so the planted one also serves beside a real
detector.  The three ONNX files are built with ``onnx.helper``:

``det_10g.onnx``
    SCRFD-style detector: one NCHW image input with symbolic height/width and
    nine outputs (strides 8/16/32 x scores, boxes, key points; two anchors per
    location), shapes ``[N, 1]``, ``[N, 4]``, ``[N, 10]``.
``genderage.onnx``
    96x96 input, ``[N, 3]`` output (two gender logits and age/100).
``w600k_r50.onnx``
    112x112 input, 512-d output (a seeded random projection).

How the planted detector finds blobs
------------------------------------
A pixel is "skin" when its chroma ``(R - G, G - B)`` lies within
:data:`SKIN_RADIUS` of :data:`SKIN_CHROMA` (0..255 units, full strength inside
``SKIN_RADIUS - SKIN_RAMP``) and its red is above :data:`SKIN_MIN_RED`, so
black, grey, white, saturated orange, red and blue pixels are never skin, while
the lit face of ``skimage.data.astronaut()`` mostly is.  Skin only counts where
it is *solid*: the skin density of each 8x8 cell of the detector input is mapped
from :data:`SOLID_LOW`..:data:`SOLID_HIGH` to 0..1, so thin skin-coloured
lines (the fringe between orange cloth and a white strap, JPEG ringing) and
speckle count for nothing.

A face is a *blob* of solid skin: for every anchor the detector compares the
mean solid skin inside a square template of side ``F`` centred on the anchor
with its surroundings three ways: the ring out to the ``2F`` square,
``4/3 * (inner - ring square)``, the neighbours left and right (a ``3F x F``
row) and those above and below (an ``F x 3F`` column),
``3/2 * (inner - row or column)``.  Each is 1 for a blob exactly the template's
size and 0 for uniform skin or no skin; the row and column also reject long
strips such as straps and sleeve edges.  A fourth term keeps each blob to the
template that fits it: the skin in the anchor's ``3F`` window, as a square of
side ``r * F``, must have ``r`` below :data:`SIZE_RATIO_MAX` (full credit up to
``SIZE_RATIO_MAX - SIZE_RATIO_RAMP``), so a forehead or cheek patch of a bigger
face is left to the larger template that holds the whole face instead of being
reported as a face fragment.  The smallest of the four, ``contrast``, gives the
score ``sigmoid(SCORE_GAIN * (contrast - SCORE_BIAS))``.  Template sides are
16, 32 (stride 8), 64, 96 (stride 16), 128, 192 (stride 32) pixels of the
detector input, so, like a real SCRFD, a face taller than about three quarters
of the detector input is missed (and found again at a smaller ``det_size``), and
blobs with ``S`` under about 11 detector pixels are not found.

The box and landmarks come from the blob's moments (of the plain skin mask)
inside a ``3F`` window: centroid ``(cx, cy)`` and equivalent square side
``S = sqrt(mass)``.  Then ``bbox = (cx -/+ 0.55 S, cy -/+ 0.65 S)`` and the five
key points are ``(cx, cy) + S * KPS_OFFSETS`` (eyes above nose above mouth
corners, placed where they are on the astronaut's face).  :func:`paint_face`
draws a detectable face, :func:`expected_face` gives the landmarks reported
(within a few pixels); keep painted faces a face width apart.  A black or grey
image has no skin and so no face.  On ``skimage.data.astronaut()`` at the
default ``det_size=640``, ``det_thresh=0.5`` it reports one face, hers (box about
``(169, 61)-(272, 183)``, score about 0.95).

The genderage model looks at the central 24x24 of its 96x96 crop: age is
``10 + 70 * mean brightness`` years, gender is male when mean red minus blue
exceeds 65 (of 255): :data:`FACE_RGB` gives a male of 61, :data:`FEMALE_FACE_RGB`
a female of 62.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SKIN_CHROMA: tuple[float, float] = (40.0, 25.0)
"""Centre of the skin chroma disc: (R - G, G - B) in 0..255 units."""
SKIN_RADIUS: float = 25.0
SKIN_RAMP: float = 10.0
SKIN_MIN_RED: float = 110.0
SKIN_RAMP_RED: float = 20.0
SOLID_LOW: float = 0.5
SOLID_HIGH: float = 0.85
"""Skin density of an 8x8 detector cell that counts as no / full solid skin."""
SIZE_RATIO_MAX: float = 2.0
SIZE_RATIO_RAMP: float = 0.5
"""An anchor whose window holds a blob of side ``r * F`` keeps its score for
``r <= SIZE_RATIO_MAX - SIZE_RATIO_RAMP`` and loses it all at ``SIZE_RATIO_MAX``."""
FACE_RGB: tuple[int, int, int] = (225, 180, 150)
"""A full-strength skin colour (the planted genderage model calls it male)."""
FEMALE_FACE_RGB: tuple[int, int, int] = (220, 185, 165)
"""A full-strength skin colour the planted genderage model calls female."""
SCORE_GAIN: float = 12.0
SCORE_BIAS: float = 0.45
BOX_HALF: tuple[float, float] = (0.55, 0.65)
"""Half width and half height of the reported box, in units of ``S``."""
KPS_OFFSETS: np.ndarray = np.array([[-0.22, -0.21], [0.22, -0.21], [0.0, 0.03], [-0.18, 0.22], [0.18, 0.22]])
"""Landmarks relative to the blob centroid, in units of ``S``: left eye, right eye, nose tip, left and
right mouth corners (image left/right)."""
TEMPLATES: dict[int, tuple[int, int]] = {8: (2, 4), 16: (4, 6), 32: (4, 6)}
"""Per stride, the template side of each anchor in cells of that stride."""
ELLIPSE_ASPECT: float = 0.8
"""Width/height of the ellipse :func:`paint_face` draws."""

DETECTOR_FILE = "det_10g.onnx"
GENDERAGE_FILE = "genderage.onnx"
RECOGNIZER_FILE = "w600k_r50.onnx"

_OPSET = 17
_IR_VERSION = 8  # readable by onnxruntime releases ComfyUI users still run


def _onnx() -> Any:
    import onnx  # a dependency of the package

    return onnx


class _GraphBuilder:
    """Small helper that names nodes and constants predictably.

    Node names never start with ``Sub``/``Mul``: insightface reads those names
    to guess an mxnet model's input normalisation.
    """

    def __init__(self, prefix: str) -> None:
        self.onnx = _onnx()
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{self.prefix}_{kind.lower()}_{self._count}"

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        array = np.asarray(value, dtype=dtype)
        name = self._name("const")
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        name = self._name(op_type)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def output(self, tensor: str, name: str) -> str:
        """Expose ``tensor`` under the graph output name ``name``."""
        self.nodes.append(
            self.onnx.helper.make_node("Identity", [tensor], [name], name=self._name("output"))
        )
        return name

    def model(self, inputs: list[Any], outputs: list[Any], graph_name: str) -> Any:
        onnx = self.onnx
        graph = onnx.helper.make_graph(self.nodes, graph_name, inputs, outputs, self.initializers)
        model = onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid("", _OPSET)],
            producer_name="cradle2cane.testing.planted_faces",
        )
        model.ir_version = _IR_VERSION
        onnx.checker.check_model(model)
        return model


def _detector_model() -> Any:
    """Build the planted SCRFD-style detector (see the module docstring)."""
    g = _GraphBuilder("det")
    onnx = g.onnx
    f32 = onnx.TensorProto.FLOAT
    x = "input.1"

    # insightface feeds (pixel - 127.5) / 128 in RGB order; undo that.
    pix = g.op("Add", [g.op("Mul", [x, g.const(128.0)]), g.const(127.5)])
    # Skin: chroma (R-G, G-B) near SKIN_CHROMA and red bright enough.
    to_chroma = np.array([[1, -1, 0], [0, 1, -1]], np.float32).reshape(2, 3, 1, 1)
    chroma_bias = -np.asarray(SKIN_CHROMA, np.float32)
    chroma = g.op("Conv", [pix, g.const(to_chroma), g.const(chroma_bias)])
    dist = g.op("Sqrt", [g.op("ReduceSumSquare", [chroma], axes=[1], keepdims=1)])
    near = g.op("Mul", [g.op("Sub", [g.const(SKIN_RADIUS), dist]), g.const(1.0 / SKIN_RAMP)])
    red = g.op("Slice", [pix, g.const([0], np.int64), g.const([1], np.int64), g.const([1], np.int64)])
    lit = g.op("Mul", [g.op("Sub", [red, g.const(SKIN_MIN_RED)]), g.const(1.0 / SKIN_RAMP_RED)])
    zero, one = g.const(0.0), g.const(1.0)
    mask = g.op("Mul", [g.op("Clip", [near, zero, one]), g.op("Clip", [lit, zero, one])])

    def coords(shape: str, axis: int, reshape: list[int]) -> str:
        length = g.op("Gather", [shape, g.const(axis, np.int64)], axis=0)
        rng = g.op("Range", [g.const(0, np.int64), length, g.const(1, np.int64)])
        return g.op("Reshape", [g.op("Cast", [rng], to=f32), g.const(reshape, np.int64)])

    shape = g.op("Shape", [x])
    xs = coords(shape, 3, [1, 1, 1, -1])
    ys = coords(shape, 2, [1, 1, -1, 1])
    feat = g.op("Concat", [mask, g.op("Mul", [mask, xs]), g.op("Mul", [mask, ys])], axis=1)

    def chan(t: str, i: int) -> str:
        return g.op("Slice", [t, g.const([i], np.int64), g.const([i + 1], np.int64), g.const([1], np.int64)])

    # Solid skin: cells of the finest stride whose skin density is high.  Thin
    # skin-coloured lines (edges between orange and white cloth, JPEG fringes)
    # and speckle fill a cell only partly and count for nothing.
    base = min(TEMPLATES)
    density = g.op("AveragePool", [mask], kernel_shape=[base, base], strides=[base, base])
    solid_base = g.op(
        "Clip",
        [g.op("Mul", [g.op("Sub", [density, g.const(SOLID_LOW)]), g.const(1.0 / (SOLID_HIGH - SOLID_LOW))]),
         zero, one],
    )

    scores, boxes, kpss = [], [], []
    for stride, cells in TEMPLATES.items():
        coarse = g.op("AveragePool", [feat], kernel_shape=[stride, stride], strides=[stride, stride])
        cshape = g.op("Shape", [coarse])
        ax = g.op("Mul", [coords(cshape, 3, [1, 1, 1, -1]), g.const(float(stride))])
        ay = g.op("Mul", [coords(cshape, 2, [1, 1, -1, 1]), g.const(float(stride))])
        factor = stride // base
        coarse_mass = solid_base if factor == 1 else g.op(
            "AveragePool", [solid_base], kernel_shape=[factor, factor], strides=[factor, factor]
        )
        per_anchor: dict[str, list[str]] = {"s": [], "b": [], "k": []}
        for k in cells:
            side = float(k * stride)
            half = k // 2
            inner = g.op(
                "AveragePool", [coarse_mass], kernel_shape=[k, k],
                pads=[half, half, half - 1, half - 1], count_include_pad=1,
            )
            outer = g.op(
                "AveragePool", [coarse_mass], kernel_shape=[2 * k, 2 * k],
                pads=[k, k, k - 1, k - 1], count_include_pad=1,
            )
            # The template with its left and right neighbours (3F x F) and
            # with those above and below it (F x 3F).
            row = g.op(
                "AveragePool", [coarse_mass], kernel_shape=[k, 3 * k],
                pads=[half, 3 * half, half - 1, 3 * half - 1], count_include_pad=1,
            )
            column = g.op(
                "AveragePool", [coarse_mass], kernel_shape=[3 * k, k],
                pads=[3 * half, half, 3 * half - 1, half - 1], count_include_pad=1,
            )
            # contrast = template mean - ring mean (ring = the 2F square minus
            # the template): 1 for an isolated blob of the template's size.
            # ``across`` and ``along`` compare the template with its neighbours
            # on either side and above/below: a long strip (a strap, a sleeve
            # edge) has skin along it and is no blob.
            ring = g.op("Mul", [g.op("Sub", [inner, outer]), g.const(4.0 / 3.0)])
            across = g.op("Mul", [g.op("Sub", [inner, row]), g.const(1.5)])
            along = g.op("Mul", [g.op("Sub", [inner, column]), g.const(1.5)])
            # Moments over a 3F window, so an anchor whose 2F ring clips the
            # blob still reports the whole blob (every anchor agrees; NMS merges).
            moments = g.op(
                "AveragePool", [coarse], kernel_shape=[3 * k, 3 * k],
                pads=[3 * half, 3 * half, 3 * half - 1, 3 * half - 1], count_include_pad=1,
            )
            window_mass = chan(moments, 0)
            # The skin in the window, as a square, measured in template sides:
            # a part of a bigger blob (an eye-to-hair patch of forehead) sees
            # more skin around it than its template holds and is left to the
            # larger template that fits the whole blob.
            ratio = g.op("Mul", [g.op("Sqrt", [window_mass]), g.const(3.0)])
            fits = g.op("Mul", [g.op("Sub", [g.const(SIZE_RATIO_MAX), ratio]), g.const(1.0 / SIZE_RATIO_RAMP)])
            contrast = g.op("Min", [g.op("Min", [ring, across, along]), fits])
            logit = g.op("Mul", [g.op("Sub", [contrast, g.const(SCORE_BIAS)]), g.const(SCORE_GAIN)])
            score = g.op("Sigmoid", [logit])
            denom = g.op("Add", [window_mass, g.const(1e-6)])
            cx = g.op("Div", [chan(moments, 1), denom])
            cy = g.op("Div", [chan(moments, 2), denom])
            inv_s = g.const(1.0 / stride)
            dx = g.op("Mul", [g.op("Sub", [cx, ax]), inv_s])  # centroid offset, in strides
            dy = g.op("Mul", [g.op("Sub", [cy, ay]), inv_s])
            size = g.op("Mul", [g.op("Sqrt", [window_mass]), g.const(3.0 * side / stride)])
            hw = g.op("Mul", [size, g.const(BOX_HALF[0])])
            hh = g.op("Mul", [size, g.const(BOX_HALF[1])])
            box = g.op(
                "Concat",
                [g.op("Sub", [hw, dx]), g.op("Sub", [hh, dy]), g.op("Add", [hw, dx]), g.op("Add", [hh, dy])],
                axis=1,
            )
            ox = g.const(KPS_OFFSETS[:, 0].astype(np.float32).reshape(1, 5, 1, 1))
            oy = g.const(KPS_OFFSETS[:, 1].astype(np.float32).reshape(1, 5, 1, 1))
            kx = g.op("Add", [dx, g.op("Mul", [size, ox])])  # [1,5,h,w]
            ky = g.op("Add", [dy, g.op("Mul", [size, oy])])
            axis2 = g.const([2], np.int64)
            kxy = g.op("Concat", [g.op("Unsqueeze", [kx, axis2]), g.op("Unsqueeze", [ky, axis2])], axis=2)
            kps = g.op("Transpose", [kxy], perm=[0, 3, 4, 1, 2])  # [1,h,w,5,2]
            kps = g.op("Reshape", [kps, g.const([0, 0, 0, 1, 10], np.int64)])
            axis3 = g.const([3], np.int64)
            per_anchor["s"].append(g.op("Unsqueeze", [g.op("Transpose", [score], perm=[0, 2, 3, 1]), axis3]))
            per_anchor["b"].append(g.op("Unsqueeze", [g.op("Transpose", [box], perm=[0, 2, 3, 1]), axis3]))
            per_anchor["k"].append(kps)
        for key, width, sink in (("s", 1, scores), ("b", 4, boxes), ("k", 10, kpss)):
            stacked = g.op("Concat", per_anchor[key], axis=3)  # [1,h,w,anchors,width]
            sink.append(g.op("Reshape", [stacked, g.const([-1, width], np.int64)]))

    outputs = []
    for kind, width, tensors in (("score", 1, scores), ("bbox", 4, boxes), ("kps", 10, kpss)):
        for stride, tensor in zip(TEMPLATES, tensors):
            name = f"{kind}_{stride}"
            g.output(tensor, name)
            outputs.append(onnx.helper.make_tensor_value_info(name, f32, [f"n{stride}", width]))
    inputs = [onnx.helper.make_tensor_value_info(x, f32, [1, 3, "height", "width"])]
    return g.model(inputs, outputs, "planted_scrfd")


def _genderage_model() -> Any:
    """Age from brightness, gender from red-minus-blue, of the centre of the crop."""
    g = _GraphBuilder("ga")
    onnx = g.onnx
    f32 = onnx.TensorProto.FLOAT
    x = "data"
    centre = g.op(
        "Slice", [x, g.const([36, 36], np.int64), g.const([60, 60], np.int64), g.const([2, 3], np.int64)]
    )
    means = g.op("ReduceMean", [centre], axes=[2, 3], keepdims=0)  # [N,3], normalised
    pix = g.op("Add", [g.op("Mul", [means, g.const(128.0)]), g.const(127.5)])
    weights = np.zeros((3, 3), np.float32)
    weights[0, 1], weights[2, 1] = 0.1, -0.1  # male logit = (R - B - 65) / 10
    weights[:, 2] = 0.7 / (3 * 255.0)  # age / 100 = 0.1 + 0.7 * brightness
    bias = np.array([0.0, -6.5, 0.1], np.float32)
    out = g.op("Add", [g.op("MatMul", [pix, g.const(weights)]), g.const(bias)])
    g.output(out, "fc1")
    inputs = [onnx.helper.make_tensor_value_info(x, f32, ["N", 3, 96, 96])]
    outputs = [onnx.helper.make_tensor_value_info("fc1", f32, ["N", 3])]
    return g.model(inputs, outputs, "planted_genderage")


def _recognizer_model(seed: int) -> Any:
    """A seeded random projection of an 8x8 thumbnail to 512 values."""
    g = _GraphBuilder("rec")
    onnx = g.onnx
    f32 = onnx.TensorProto.FLOAT
    x = "input.1"
    pooled = g.op("AveragePool", [x], kernel_shape=[14, 14], strides=[14, 14])  # [N,3,8,8]
    flat = g.op("Flatten", [pooled], axis=1)
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((192, 512)) / np.sqrt(192.0)).astype(np.float32)
    out = g.op("MatMul", [flat, g.const(weights)])
    g.output(out, "683")
    inputs = [onnx.helper.make_tensor_value_info(x, f32, ["None", 3, 112, 112])]
    outputs = [onnx.helper.make_tensor_value_info("683", f32, ["None", 512])]
    return g.model(inputs, outputs, "planted_recognizer")


def write_insightface_pack(pack_dir: Path, seed: int = 0, *, detector: bool = True) -> None:
    """Write the tiny planted pack (detector, genderage, recognizer) to ``pack_dir``.

    ``pack_dir`` is the pack folder itself, e.g.
    ``models/insightface/models/buffalo_l``.  The same ``seed`` always gives
    byte-identical files.  ``detector=False`` leaves the detector out, for a
    pack that gets a real detector beside the planted attribute models.
    """
    pack_dir = Path(pack_dir)
    pack_dir.mkdir(parents=True, exist_ok=True)
    models = [(DETECTOR_FILE, _detector_model)] if detector else []
    models += [(GENDERAGE_FILE, _genderage_model), (RECOGNIZER_FILE, lambda: _recognizer_model(seed))]
    for file_name, build in models:
        (pack_dir / file_name).write_bytes(build().SerializeToString())
    logger.debug("wrote tiny insightface pack to %s", pack_dir)


def equivalent_size(size: float) -> float:
    """``S`` (square root of the blob area) of a face painted with ``size``."""
    return float(np.sqrt(np.pi / 4.0 * ELLIPSE_ASPECT) * size)


def paint_face(
    image: np.ndarray,
    center: tuple[float, float],
    size: float,
    colour: tuple[int, int, int] = FACE_RGB,
) -> np.ndarray:
    """Draw, in place, a face the planted detector finds: a filled skin ellipse.

    ``size`` is the ellipse height in pixels (width is ``0.8 * size``);
    ``image`` is RGB uint8.  Returns ``image`` for chaining.
    """
    import cv2

    axes = (int(round(size * ELLIPSE_ASPECT / 2)), int(round(size / 2)))
    c = (int(round(center[0])), int(round(center[1])))
    cv2.ellipse(image, c, axes, 0.0, 0.0, 360.0, tuple(int(v) for v in colour), thickness=-1)
    return image


def expected_face(center: tuple[float, float], size: float) -> dict[str, np.ndarray]:
    """The bbox and 5 landmarks the planted detector reports for :func:`paint_face`."""
    s = equivalent_size(size)
    c = np.asarray(center, dtype=np.float64)
    half = np.array(BOX_HALF) * s
    return {
        "bbox": np.concatenate([c - half, c + half]),
        "kps": c + KPS_OFFSETS * s,
        "size": np.float64(s),
    }
