"""``cradle2cane`` command line: ``tiny``, ``age``, and ``bench`` / ``evaluate`` from their modules.

Every failure on bad input ends with a non-zero exit and one readable line on stderr (the full
traceback only with ``--debug``); outputs are written to temporary names and renamed at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from . import bench, evaluate
from .arguments import UsageError, add_model_arguments, load_model, progress_bar, quiet_libraries, run_command

logger = logging.getLogger("cradle2cane")


def _cmd_tiny(args: argparse.Namespace) -> int:
    from ..testing.tiny import write_tiny_models

    out = write_tiny_models(args.dir, seed=args.seed, overwrite=args.overwrite)
    print(out)
    return 0


def _parse_face(value: str):
    if value in ("all", "largest"):
        return value
    try:
        index = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--face must be all, largest or a face number, got {value!r}") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"--face must be >= 0, got {index}")
    return index


def _output_paths(out: Path, image: Path, target_ages: Sequence[int]) -> list[Path]:
    """One file for one age; a folder of ``<stem>_<age>.png`` for several."""
    if len(target_ages) == 1:
        if out.is_dir():
            return [out / f"{image.stem}_{target_ages[0]}.png"]
        return [out]
    if out.suffix and not out.is_dir():
        raise UsageError(f"--out {out} looks like a file, but {len(target_ages)} target ages need a folder")
    return [out / f"{image.stem}_{age}.png" for age in target_ages]


def _cmd_age(args: argparse.Namespace) -> int:
    from ..files.images import save_image_atomic, to_tensor, to_uint8
    from ..method.prompts import check_age, check_gender

    targets = [check_age(a, "--target-age") for a in args.target_age]
    if args.source_age is not None:
        check_age(args.source_age, "--source-age")
    if args.gender is not None:
        args.gender = check_gender(args.gender, "--gender")
    if args.aligned and (args.source_age is None or args.gender is None):
        raise UsageError("--aligned needs --source-age and --gender (there is no detection to estimate them)")
    outputs = _output_paths(args.out, args.image, targets)
    from ..files.images import load_image

    photo, alpha = load_image(args.image)
    model = load_model(args)
    progress = progress_bar(args)
    if args.aligned:
        result = model(to_tensor(photo), targets, args.source_age, args.gender, seed=args.seed,
                       strength=args.strength, id_strength=args.id_strength, callback=progress,
                       reference_inference=args.reference_inference)
        images = [to_uint8(img) for img in result.images]
    else:
        from ..photo import age_photo

        result = age_photo(model, photo, targets, models_dir=args.models, source_age=args.source_age,
                           gender=args.gender, face=args.face, seed=args.seed, strength=args.strength,
                           id_strength=args.id_strength, alpha=alpha, callback=progress,
                           det_size=args.det_size, det_thresh=args.det_thresh, image_name=str(args.image),
                           on_no_face=args.no_face, reference_inference=args.reference_inference)
        if result.no_face:
            print(f"{result.no_face}; wrote the photo unchanged (--no-face skip)", file=sys.stderr)
        for face, age, gender, (est_age, est_gender) in zip(result.faces, result.source_ages, result.genders,
                                                            result.estimated):
            print(f"face {face.face_index}: source age {age}, {gender} (estimated: {est_age}, {est_gender})",
                  file=sys.stderr)
        images = result.photos
    for image, path in zip(images, outputs):
        save_image_atomic(image, path)
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cradle2cane", description="Cradle2Cane lifespan face aging")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny", help="write a tiny random model set (for tests and demos)")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    tiny.set_defaults(func=_cmd_tiny)

    age = sub.add_parser("age", help="age the face(s) in a photo, or an aligned face with --aligned")
    age.add_argument("image", type=Path)
    add_model_arguments(age)
    age.add_argument("--target-age", type=int, action="append", required=True,
                     help="target age in years, 0..100 (repeat for several)")
    age.add_argument("--source-age", type=int, default=None, help="age of the input face (default: estimated)")
    age.add_argument("--gender", default=None, help="male or female (default: estimated)")
    age.add_argument("--seed", type=int, default=0)
    age.add_argument("--strength", type=float, default=None, help="override the AdaNI pass-1 strength (0..1]")
    age.add_argument("--id-strength", type=float, default=None, help="override the pass-2 strength (0..1]")
    age.add_argument("--aligned", action="store_true", help="the input is already an FFHQ-aligned face crop")
    age.add_argument("--reference-inference", action="store_true",
                     help="reproduce the reference inference script (8-bit aged image, PIL-resized ArcFace input, "
                          "CLIP fed 0..255 pixels), to compare with the published images")
    age.add_argument("--face", type=_parse_face, default="largest", help="all, largest (default) or a face number")
    age.add_argument("--det-size", type=int, default=640, help="face detector input size")
    age.add_argument("--det-thresh", type=float, default=0.5, help="face detector score threshold")
    age.add_argument("--no-face", choices=["error", "skip"], default="error",
                     help="a photo without a usable face: fail (default) or write it unchanged")
    age.add_argument("--out", type=Path, required=True, help="output file (one age) or folder (several ages)")
    age.add_argument("--quiet", action="store_true", help="no progress bar")
    age.set_defaults(func=_cmd_age)

    bench.register(sub)
    evaluate.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        quiet_libraries()
    return run_command(args, "cradle2cane")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
