"""``cradle2cane age`` and ``cradle2cane sweep``: a photo (or an aligned face) to one or more ages.

Everything that can be checked cheaply is checked before the diffusion model loads, in this order:
the option values (by the parser), the input image, the output path(s), the model files, and then
the faces (the detector is small, and torch is not imported for it), so a wrong option or a photo
without a face fails within seconds instead of after an 8 GB load.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .arguments import UsageError, load_model, number_in, progress_bar, say

logger = logging.getLogger(__name__)

DEFAULT_SWEEP = "10-80:10"


@dataclass
class PreparedPhoto:
    """The checked input of an ``age``/``sweep`` run, before any model is loaded."""

    photo: np.ndarray
    alpha: np.ndarray | None
    targets: list[int]
    detected: list | None  # the faces found (None with --aligned)


def parse_target_ages(values: Sequence[str], option: str = "--target-age") -> list[int]:
    """Every value of a repeatable option, each one age, a list or a range (``10-80:10``); repeats
    dropped, order kept."""
    from ..method.prompts import parse_ages

    ages = [age for value in values for age in parse_ages(value, option)]
    return list(dict.fromkeys(ages))


def is_folder(out: Path, text: str) -> bool:
    """``--out`` names a folder when it ends in a separator, is an existing folder or has no
    extension (an image file needs one)."""
    return text.endswith(("/", "\\")) or out.is_dir() or not out.suffix


def output_paths(out: Path, out_text: str, image: Path, target_ages: Sequence[int], suffix: str = ".png") -> list[Path]:
    """One file for one age, or ``<folder>/<stem>_<age>.png`` for each age when ``--out`` is a folder
    (several ages need one)."""
    if is_folder(out, out_text):
        return [out / f"{image.stem}_{age}{suffix}" for age in target_ages]
    if len(target_ages) > 1:
        raise UsageError(f"--out {out_text} names a file, but {len(target_ages)} target ages need a folder: "
                         f"end it with / (e.g. --out {out.with_suffix('')}/)")
    return [out]


def prepare(args: argparse.Namespace, outputs_for) -> tuple[PreparedPhoto, list[Path]]:
    """Check everything cheap, in order, and find the faces; ``outputs_for(prepared)`` returns the
    output paths, checked here too. Nothing heavy is loaded."""
    from ..files.atomic import check_output
    from ..files.images import load_image
    from ..method.prompts import check_gender

    targets = parse_target_ages(args.target_age)
    if args.gender is not None:
        args.gender = check_gender(args.gender, "--gender")
    if args.aligned and (args.source_age is None or args.gender is None):
        raise UsageError("--aligned needs --source-age and --gender (there is no detection to estimate them)")
    photo, alpha = load_image(args.image)
    prepared = PreparedPhoto(photo, alpha, targets, None)
    outputs = outputs_for(prepared)
    for path in outputs:
        check_output(path, overwrite=args.overwrite, inputs=[args.image])
    check_model_files(args)
    if not args.aligned:
        prepared.detected = detect_faces(args, photo)
    return prepared, outputs


def check_model_files(args: argparse.Namespace) -> None:
    """Every model file exists, and the settings allow the chosen strengths (reads only small files)."""
    from ..loading.paths import ModelPaths
    from ..loading.settings import Settings
    from ..method.adani import check_strength

    paths = ModelPaths.resolve(args.models, base=args.base)
    settings = Settings.from_file(paths.hparams) if paths.hparams is not None else Settings()
    if args.strength is not None:
        check_strength(args.strength, settings.infer_step, "--strength")
    if args.id_strength is not None:
        check_strength(args.id_strength, settings.infer_step, "--id-strength")


def detect_faces(args: argparse.Namespace, photo: np.ndarray) -> list:
    """The chosen faces of the photo; with ``--no-face skip`` an empty list when there is none."""
    from ..faces.detect import FaceDetector, NoFaceError
    from ..faces.packs import find_insightface_pack

    detector = FaceDetector(find_insightface_pack(args.models), det_size=args.det_size, det_thresh=args.det_thresh,
                            min_face_size=args.min_face_size)
    try:
        return detector.find(photo, args.face, image_name=str(args.image))
    except NoFaceError:
        if args.no_face == "error":
            raise
        return []


def age_images(args: argparse.Namespace, prepared: PreparedPhoto) -> list[np.ndarray]:
    """Load the model and age the photo (or the aligned face) to every target age."""
    from ..faces.paste import is_greyscale, to_grey
    from ..files.images import to_tensor, to_uint8
    from ..photo import age_photo

    if prepared.detected == []:  # --no-face skip: no model needed
        say(f"{args.image}: no usable face; writing the photo unchanged (--no-face skip)", sys.stderr)
        unchanged = prepared.photo if prepared.alpha is None else np.dstack([prepared.photo, prepared.alpha])
        return [unchanged.copy() for _ in prepared.targets]
    model = load_model(args)
    progress = progress_bar(args)
    if args.aligned:
        result = model(to_tensor(prepared.photo), prepared.targets, args.source_age, args.gender, seed=args.seed,
                       strength=args.strength, id_strength=args.id_strength, callback=progress,
                       reference_inference=args.reference_inference)
        faces = [to_uint8(img) for img in result.images]
        if is_greyscale(prepared.photo):  # a grey face comes back grey, as a grey photo does from age_photo
            faces = [np.repeat(to_grey(face)[..., None], 3, axis=2) for face in faces]
        return faces
    result = age_photo(model, prepared.photo, prepared.targets, detected=prepared.detected,
                       source_age=args.source_age, gender=args.gender, seed=args.seed, strength=args.strength,
                       id_strength=args.id_strength, alpha=prepared.alpha, callback=progress,
                       image_name=str(args.image), reference_inference=args.reference_inference)
    if not args.quiet:
        for face, age, gender, (est_age, est_gender) in zip(result.faces, result.source_ages, result.genders,
                                                            result.estimated):
            say(f"face {face.face_index}: source age {age}, {gender} (estimated: {est_age}, {est_gender})",
                sys.stderr)
    return result.photos


# ----------------------------------------------------------------------------- age


def cmd_age(args: argparse.Namespace) -> int:
    from ..faces.paste import to_grey
    from ..files.images import output_format, save_image_atomic, stores_grey

    def outputs_for(prepared: PreparedPhoto) -> list[Path]:
        paths = output_paths(args.out, args.out_text, args.image, prepared.targets)
        for path in paths:
            output_format(path, prepared.alpha is not None)
        return paths

    prepared, outputs = prepare(args, outputs_for)
    grey = stores_grey(args.image)  # a grey file in, a grey file out
    for image, path in zip(age_images(args, prepared), outputs):
        save_image_atomic(to_grey(image) if grey else image, path, overwrite=args.overwrite)
        say(path)
    return 0


# ----------------------------------------------------------------------------- sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..files.images import ANIMATION_FORMATS, output_format, save_animation_atomic, save_image_atomic
    from .strip import lifespan_strip

    if args.target_age is None:
        args.target_age = [DEFAULT_SWEEP]
    animated = args.out.suffix.lower() in ANIMATION_FORMATS
    gif = args.out.with_suffix(".gif") if args.gif and not animated else None

    def outputs_for(prepared: PreparedPhoto) -> list[Path]:
        if is_folder(args.out, args.out_text):
            raise UsageError(f"--out {args.out_text} is a folder; sweep writes one picture: give a file name such as "
                             f"{Path(args.out_text) / (args.image.stem + '_lifespan.png')}")
        if animated:
            output_format(args.out, False, formats=ANIMATION_FORMATS)
        else:
            output_format(args.out)
        return [args.out] + ([gif] if gif is not None else [])

    prepared, _ = prepare(args, outputs_for)
    frames = age_images(args, prepared)
    labels = [f"{age}" for age in prepared.targets]
    if animated:
        save_animation_atomic([_labelled(f, t) for f, t in zip(frames, labels)], args.out,
                              seconds_per_frame=args.frame_seconds, overwrite=args.overwrite)
    else:
        save_image_atomic(lifespan_strip(frames, labels, args.columns, args.tile), args.out, overwrite=args.overwrite)
    say(args.out)
    if gif is not None:
        save_animation_atomic([_labelled(f, t) for f, t in zip(frames, labels)], gif,
                              seconds_per_frame=args.frame_seconds, overwrite=args.overwrite)
        say(gif)
    return 0


def _labelled(frame: np.ndarray, label: str) -> np.ndarray:
    from .strip import label_image

    return label_image(frame[..., :3], label)


def register(subparsers, formatter, add_common) -> None:
    """The ``age`` and ``sweep`` sub-commands; ``add_common(parser)`` adds the shared options."""
    age = subparsers.add_parser(
        "age", formatter_class=formatter, help="age the face(s) in a photo, or an aligned face with --aligned",
        description="Age the face(s) in a photo: detect, align, estimate age and gender, age in two passes, "
                    "paste back. Checks every option, the output and the faces before loading the model.")
    age.add_argument("image", type=Path, help="the photo (PNG, JPEG, WebP, BMP, TIFF or GIF)")
    age.add_argument("--target-age", action="append", required=True, metavar="AGES",
                     help="target age(s) in years 0..100: one (70), a list (20,40,60) or a range (10-80:10); "
                          "repeatable")
    age.add_argument("--out", required=True, metavar="PATH",
                     help="output file for one age (.png, .jpg, .webp, .bmp, .tif); a folder (ending in / or "
                          "existing) gets <name>_<age>.png for each age")
    add_common(age)
    age.set_defaults(func=cmd_age)

    sweep = subparsers.add_parser(
        "sweep", formatter_class=formatter, help="a labelled lifespan strip (or animation) of one photo",
        description="Age a photo to many ages and write one picture: a labelled strip (grid) of the ages, or, "
                    "with --out *.gif / *.webp, an animation (--gif writes a GIF beside the strip).")
    sweep.add_argument("image", type=Path, help="the photo (PNG, JPEG, WebP, BMP, TIFF or GIF)")
    sweep.add_argument("--ages", dest="target_age", action="append", default=None, metavar="AGES",
                       help="ages to show: a range (10-80:10), a list (5,20,40,70) or one age; repeatable "
                            f"(default: {DEFAULT_SWEEP})")
    sweep.add_argument("--out", required=True, metavar="PATH",
                       help="the strip (.png, .jpg, .webp is an animation, .bmp, .tif) or an animation (.gif, .webp)")
    sweep.add_argument("--gif", action="store_true", help="also write an animated GIF beside the strip (same name)")
    sweep.add_argument("--columns", type=number_in(0, 1000, integer=True), default=0,
                       help="tiles per row of the strip (0: all in one row)")
    sweep.add_argument("--tile", type=number_in(32, 2048, integer=True), default=256,
                       help="height in pixels of each picture in the strip")
    sweep.add_argument("--frame-seconds", type=number_in(0, 60, low_open=True), default=0.5,
                       help="seconds per frame of an animation")
    add_common(sweep)
    sweep.set_defaults(func=cmd_sweep)
