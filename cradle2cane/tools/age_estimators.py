"""Age estimators for ``cradle2cane evaluate``: insightface's genderage model on aligned crops, or
detection first (``cradle2cane.faces.detect``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..faces.packs import find_insightface_pack

if TYPE_CHECKING:  # pragma: no cover
    import torch

ESTIMATORS = ("genderage", "detector", "none")
# Where a face detector's box lies on an FFHQ-aligned crop (fractions of the side): the genderage
# model crops 1.5x this box around its centre, i.e. almost the whole aligned image.
ALIGNED_FACE_BOX = (0.25, 0.22, 0.75, 0.87)


def _genderage_file(pack: Path) -> Path:
    named = pack / "genderage.onnx"
    if named.is_file():
        return named
    import onnx

    for path in sorted(pack.glob("*.onnx")):
        graph = onnx.load(str(path), load_external_data=False).graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] if graph.input else []
        out = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] if graph.output else []
        if dims[-2:] == [96, 96] and len(graph.output) == 1 and out[-1:] == [3]:
            return path
    raise FileNotFoundError(f"no genderage model (96x96 input, 3 outputs) in {pack}; use a complete buffalo_l "
                            f"or antelopev2 pack")


class GenderAgeEstimator:
    """insightface's genderage model on aligned crops (no detection)."""

    def __init__(self, models_dir: Path, pack: str | None = None, providers: Sequence[str] | None = None) -> None:
        try:
            from insightface.model_zoo import model_zoo
        except ImportError as exc:
            raise ImportError("the genderage estimator needs insightface and onnxruntime: "
                              "pip install insightface onnxruntime (or onnxruntime-gpu)") from exc
        import contextlib
        import io

        path = _genderage_file(find_insightface_pack(Path(models_dir), pack))
        if providers is None:
            try:
                from ..faces.packs import resolve_providers

                providers = resolve_providers("auto")
            except ImportError:
                providers = ["CPUExecutionProvider"]
        with contextlib.redirect_stdout(io.StringIO()):
            self.model = model_zoo.get_model(str(path), providers=list(providers))
            if self.model is None or getattr(self.model, "taskname", None) != "genderage":
                raise FileNotFoundError(f"{path} is not routed as a genderage model by insightface")
            self.model.prepare(-1)
        self.path = path

    def __call__(self, images: torch.Tensor) -> list[float | None]:
        from insightface.app.common import Face

        from ..files.images import to_uint8

        ages = []
        for image in images:
            rgb = to_uint8(image)
            h, w = rgb.shape[:2]
            box = np.array([ALIGNED_FACE_BOX[0] * w, ALIGNED_FACE_BOX[1] * h, ALIGNED_FACE_BOX[2] * w,
                            ALIGNED_FACE_BOX[3] * h], np.float32)
            _, age = self.model.get(np.ascontiguousarray(rgb[:, :, ::-1]), Face(bbox=box))
            ages.append(float(age))
        return ages


class DetectorEstimator:
    """Detect the face in each output (``cradle2cane.faces.detect``) and take its estimated age."""

    def __init__(self, models_dir: Path, pack: str | None = None) -> None:
        from ..faces.detect import FaceDetector

        self.detector = FaceDetector(find_insightface_pack(Path(models_dir), pack), providers="auto", det_size=320)

    def __call__(self, images: torch.Tensor) -> list[float | None]:
        from ..files.images import to_uint8

        ages = []
        for image in images:
            faces = self.detector.detect(to_uint8(image))
            if not faces or faces[0].age is None:
                ages.append(None)
                continue
            largest = max(faces, key=lambda f: f.area)
            ages.append(None if largest.age is None else float(largest.age))
        return ages


def make_estimator(name: str, models_dir: Path, pack: str | None = None):
    if name == "none":
        return None
    if name == "genderage":
        return GenderAgeEstimator(models_dir, pack)
    if name == "detector":
        return DetectorEstimator(models_dir, pack)
    raise ValueError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {name!r}")
