"""``cradle2cane evaluate``: age accuracy and identity preservation over a folder of aligned faces.

Each face is aged to every target age with the core pipeline. For every output:

* **age error**: |estimated age - target age|, the estimate from a selectable estimator:
  ``genderage`` (default: insightface's genderage model from the models folder's insightface pack,
  run on the box a detector reports for an FFHQ-aligned crop), ``detector`` (detect the face in the
  output first, via ``cradle2cane.faces.detect``) or ``none``;
* **identity**: cosine similarity of the core ArcFace's identity features of input and output;
* **harmonic score**: the harmonic mean of the age score ``max(0, 1 - error / tolerance)`` and the
  identity ``max(0, cosine)`` - high only when the age is right *and* the person is kept. This is
  this project's definition (``--age-tolerance``, 10 years by default), not a number from the paper.

Source ages and genders come from a CSV (``image,age,gender``) or from file names like
``23_male.png`` / ``23.0_female_01234.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence


from ..files.images import IMAGE_EXTENSIONS
from ..files.labels import check_label, labels_from_name, read_label_file
from .age_estimators import ESTIMATORS, make_estimator
from .arguments import HelpFormatter, add_model_arguments, load_model, number_in, say, seed_type

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)



class EvaluationError(ValueError):
    """The evaluation inputs cannot be used."""


@dataclass
class FaceInput:
    path: Path
    source_age: int
    gender: str


@dataclass
class ItemResult:
    image: str
    source_age: int
    gender: str
    target_age: int
    estimated_age: float | None
    age_error: float | None
    identity: float
    age_score: float | None
    harmonic: float | None


@dataclass
class Summary:
    count: int
    estimated: int
    age_mae: float | None
    age_score: float | None
    identity: float
    harmonic: float | None


@dataclass
class EvaluationReport:
    folder: str
    estimator: str
    age_tolerance: float
    target_ages: list[int]
    overall: Summary
    per_target: dict[str, Summary]
    items: list[ItemResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- inputs


def read_labels(path: Path) -> dict[str, tuple[int, str]]:
    """image name (as written in the file) -> (age, gender) from a CSV or JSON label file."""
    labels = {}
    for row, name, age, gender in read_label_file(path, EvaluationError):
        name = name.replace("\\", "/")
        if not name:
            raise EvaluationError(f"{path} row {row}: no image name")
        try:
            labels[name] = check_label(age, gender)
        except ValueError as exc:
            raise EvaluationError(f"{path} row {row} ({name}): {exc}") from None
    return labels


def collect_faces(folder: str | Path, labels_file: str | Path | None = None, limit: int | None = None) -> list[FaceInput]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EvaluationError(f"face folder {folder} does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                    and not p.name.startswith("."))
    if not images:
        raise EvaluationError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    labels = read_labels(Path(labels_file).expanduser()) if labels_file else {}
    faces = []
    for path in images:
        relative = str(path.relative_to(folder)).replace("\\", "/")
        label = labels.get(relative) or labels.get(path.name)
        if label is None and not labels_file:
            try:
                label = labels_from_name(path)
            except ValueError as exc:
                raise EvaluationError(str(exc)) from None
        if label is None:
            where = f"not in {labels_file}" if labels_file else "its name is not like 23_male.png"
            raise EvaluationError(f"{path}: no source age/gender ({where}); give --labels with image,age,gender "
                                  f"or rename it")
        faces.append(FaceInput(path, *label))
        if limit is not None and len(faces) >= limit:
            break
    return faces


def load_face_image(path: Path) -> torch.Tensor:
    """[1,3,H,W] 0..1 RGB."""
    from ..files.images import load_image, to_tensor

    return to_tensor(load_image(path)[0])


# ----------------------------------------------------------------------------- scoring


def age_score(error: float | None, tolerance: float) -> float | None:
    return None if error is None else max(0.0, 1.0 - error / tolerance)


def harmonic(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    b = max(0.0, b)
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


def summarise(items: Sequence[ItemResult], tolerance: float) -> Summary:
    errors = [i.age_error for i in items if i.age_error is not None]
    identity = statistics.fmean(i.identity for i in items)
    mae = statistics.fmean(errors) if errors else None
    scores = [i.age_score for i in items if i.age_score is not None]
    score = statistics.fmean(scores) if scores else None
    return Summary(count=len(items), estimated=len(errors), age_mae=mae, age_score=score, identity=identity,
                   harmonic=harmonic(score, identity))


def evaluate(model, faces: Sequence[FaceInput], target_ages: Sequence[int], estimator=None, age_tolerance: float = 10.0,
             seed: int = 0, batch_size: int = 8, save_dir: Path | None = None, progress=None,
             overwrite: bool = True) -> list[ItemResult]:
    """Age every face to every target age and score the outputs (saved to ``save_dir`` as
    ``saved_image_path`` names them)."""
    import torch

    from ..method.arcface import arcface_embedding
    from ..method.prompts import check_age

    targets = [check_age(t, "target age") for t in target_ages]
    if not targets:
        raise EvaluationError("give at least one target age")
    if not age_tolerance > 0:
        raise EvaluationError(f"--age-tolerance must be > 0, got {age_tolerance}")
    results: list[ItemResult] = []
    per_call = max(1, batch_size // len(targets))
    for start in range(0, len(faces), per_call):
        chunk = faces[start:start + per_call]
        images = torch.cat([model.prepare_faces(load_face_image(f.path)) for f in chunk])
        with torch.no_grad():
            out = model(images, targets, [f.source_age for f in chunk], [f.gender for f in chunk], seed=seed,
                        batch_size=batch_size)
            net = model.arcface
            reference = arcface_embedding(net, images).float()
            produced = arcface_embedding(net, out.images).float()
        index = torch.tensor(out.source_index, device=reference.device)
        cosine = torch.nn.functional.cosine_similarity(reference[index], produced, dim=-1).tolist()
        estimated = estimator(out.images) if estimator is not None else [None] * len(out.images)
        for k, (b, target) in enumerate(zip(out.source_index, out.target_ages)):
            face = chunk[b]
            est = estimated[k]
            error = None if est is None else abs(est - target)
            score = age_score(error, age_tolerance)
            results.append(ItemResult(image=face.path.name, source_age=face.source_age, gender=face.gender,
                                      target_age=target, estimated_age=est, age_error=error,
                                      identity=float(cosine[k]), age_score=score,
                                      harmonic=harmonic(score, float(cosine[k]))))
            if save_dir is not None:
                from ..files.images import save_image_atomic, to_uint8

                save_image_atomic(to_uint8(out.images[k]), saved_image_path(save_dir, face, target),
                                  overwrite=overwrite, option="--save-images")
        if progress is not None:
            progress(min(start + per_call, len(faces)), len(faces))
    return results


def saved_image_path(save_dir: Path, face: FaceInput, target: int) -> Path:
    return save_dir / f"{face.path.stem}_to{target}.png"


def build_report(folder: Path, items: list[ItemResult], targets: Sequence[int], estimator: str, tolerance: float,
                 settings: dict[str, Any]) -> EvaluationReport:
    per_target = {str(t): summarise([i for i in items if i.target_age == t], tolerance) for t in targets}
    return EvaluationReport(folder=str(folder), estimator=estimator, age_tolerance=tolerance, target_ages=list(targets),
                            overall=summarise(items, tolerance), per_target=per_target, items=items, settings=settings)


def format_table(report: EvaluationReport) -> str:
    def num(value, width: int, digits: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    lines = [f"{'target':>8} {'faces':>6} {'estim.':>6} {'age MAE':>8} {'age score':>10} {'identity':>9} {'harmonic':>9}"]
    rows = [(k, s) for k, s in report.per_target.items()] + [("all", report.overall)]
    for name, s in rows:
        lines.append(f"{name:>8} {s.count:>6} {s.estimated:>6} {num(s.age_mae, 8, 2)} {num(s.age_score, 10, 3)} "
                     f"{num(s.identity, 9, 3)} {num(s.harmonic, 9, 3)}")
    lines.append(f"estim.: outputs with an age estimate ({report.estimator}); age score = max(0, 1 - |error| / "
                 f"{report.age_tolerance:g}); identity = ArcFace cosine(input, output); "
                 f"harmonic = 2*score*identity/(score+identity)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def _face_bar(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, desc="evaluating", unit="face", file=sys.stderr, leave=False)

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.n)
        if done >= _total:
            bar.close()

    return update


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..files.atomic import check_output, write_text_atomic
    from .photo_commands import parse_target_ages

    targets = parse_target_ages(args.target_age)
    json_file = None if args.json in (None, "-") else Path(args.json)
    if json_file is not None:
        check_output(json_file, overwrite=args.overwrite, inputs=[args.labels] if args.labels else [], option="--json")
    faces = collect_faces(args.folder, args.labels, args.limit)
    if args.save_images is not None:
        for face in faces:
            for target in targets:
                check_output(saved_image_path(args.save_images, face, target), overwrite=args.overwrite,
                             option="--save-images")
    estimator = make_estimator(args.estimator, Path(args.models), args.pack)
    model = load_model(args, cradle2cane_dir=args.weights)
    progress = None if args.quiet else _face_bar(len(faces))
    items = evaluate(model, faces, targets, estimator, args.age_tolerance, args.seed, args.batch_size,
                     args.save_images, progress, overwrite=args.overwrite)
    settings = {"models": str(args.models), "weights": None if args.weights is None else str(args.weights),
                "seed": args.seed, "faces": len(faces)}
    report = build_report(Path(args.folder), items, targets, args.estimator, args.age_tolerance, settings)
    say(format_table(report))
    if args.json is not None:
        text = json.dumps(report.to_dict(), indent=2)
        if json_file is None:
            say(text)
        else:
            write_text_atomic(json_file, text + "\n", overwrite=args.overwrite)
            say(f"wrote {json_file}", sys.stderr)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", formatter_class=HelpFormatter,
        help="age a folder of aligned faces and report age error, identity and their harmonic score",
        description=__doc__.split("\n\n")[0] + " Source ages/genders come from --labels (CSV image,age,gender) or "
                                               "from file names like 23_male.png.")
    parser.add_argument("folder", type=Path, help="folder of aligned face images")
    add_model_arguments(parser)
    parser.add_argument("--weights", type=Path, default=None,
                        help="a Cradle2Cane folder to evaluate instead of models/Cradle2Cane (e.g. a training output)")
    parser.add_argument("--target-age", action="append", required=True, metavar="AGES",
                        help="target age(s): one (70), a list (10,30,50,70) or a range (10-70:20); repeatable")
    parser.add_argument("--labels", type=Path, default=None, help="CSV with image,age,gender (default: file names)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="genderage",
                        help="age estimator for the outputs (default genderage: insightface's model on the aligned crop)")
    parser.add_argument("--pack", default=None, help="insightface pack name (default: buffalo_l, then antelopev2)")
    parser.add_argument("--age-tolerance", type=number_in(0, 100, low_open=True), default=10.0,
                        help="age error (years) at which the age score reaches 0")
    parser.add_argument("--seed", type=seed_type, default=0, help="random seed (0..2**64-1; fixed: same result "
                                                                  "every run)")
    parser.add_argument("--batch-size", type=number_in(1, 4096, integer=True), default=8,
                        help="images per model call")
    parser.add_argument("--limit", type=number_in(1, 10**9, integer=True), default=None,
                        help="use only the first N faces")
    parser.add_argument("--save-images", type=Path, default=None, help="also save every output image here")
    parser.add_argument("--json", default=None, help="write the full report as JSON here ('-': stdout)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file or saved images")
    parser.set_defaults(func=_cmd_evaluate)
