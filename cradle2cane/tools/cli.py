"""``cradle2cane`` command line: ``age``, ``sweep``, ``tiny``, ``download``, ``train``, and ``bench`` /
``evaluate`` from their modules.

Every failure on bad input ends with a non-zero exit and one readable line on stderr (the full
traceback only with ``--debug``), before any model loads where it can be known then; outputs are
written to temporary names and renamed at the end, and Ctrl-C or a kill leaves none behind.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from . import bench, evaluate, photo_commands
from ..method.seeds import MAX_SEED
from .arguments import (HelpFormatter, add_global_options, add_model_arguments, configure_logging,
                        number_in, run_command, say, seed_type)

PROGRAM = "cradle2cane"


def _version() -> str:
    from .. import __version__

    return __version__


# ----------------------------------------------------------------------------- tiny, download, train


def _cmd_tiny(args: argparse.Namespace) -> int:
    from ..testing.tiny import write_tiny_models

    out = write_tiny_models(args.dir, seed=args.seed, overwrite=args.overwrite)
    say(out)
    if not args.quiet:
        say("The tiny set has random weights (its output is noise, not a face), and its face detector is a "
            "stand-in that finds skin-coloured blobs: real results need the released weights and a real "
            "insightface pack (see the README's model table).", sys.stderr)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    import shutil

    from ..loading.downloads import download_plan

    plan = download_plan(base=args.base_format, vae=not args.no_vae)
    models = str(args.models)
    if args.print_only:
        for item in plan:
            say(item.shell_line(models))
        return 0
    hf = shutil.which("hf") or shutil.which("hf", path=str(Path(sys.executable).parent))
    if hf is None:
        raise FileNotFoundError("the `hf` command is not installed: pip install -U huggingface_hub "
                                "(or run the lines `cradle2cane download --print` shows)")
    for item in plan:
        command = item.command(models)
        say(f"{item.what}: {item.shell_line(models)}", sys.stderr)
        done = subprocess.run([hf, *command[1:]])
        if done.returncode:
            raise RuntimeError(f"`{item.shell_line(models)}` failed (exit {done.returncode}); nothing else was "
                               f"downloaded after it")
    say(models)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training.__main__ import main as training_main

    forwarded = list(args.training_args) + (["--debug"] if args.debug else [])
    return training_main(forwarded)


# ----------------------------------------------------------------------------- parser


def _add_photo_options(parser: argparse.ArgumentParser) -> None:
    """The options ``age`` and ``sweep`` share."""
    add_model_arguments(parser)
    parser.add_argument("--source-age", type=number_in(0, 100, integer=True), default=None,
                        help="age of the input face(s), 0..100 (default: estimated by the detector)")
    parser.add_argument("--gender", default=None, help="male or female (default: estimated by the detector)")
    parser.add_argument("--seed", type=seed_type, default=0,
                        help=f"random seed, 0..{MAX_SEED}: fixed by default, so the same input gives the same "
                             "image on every run; change it for another variation (default: 0)")
    parser.add_argument("--strength", type=number_in(0, 1, low_open=True), default=None,
                        help="pass-1 strength in (0, 1] instead of AdaNI's (default: from the age gap: "
                             "0.25, 0.5 or 0.75)")
    parser.add_argument("--id-strength", type=number_in(0, 1, low_open=True), default=None,
                        help="pass-2 strength in (0, 1] (default: id_strength of the model's hparams.yml)")
    parser.add_argument("--aligned", action="store_true",
                        help="the input is already an FFHQ-aligned face crop: no detection, so --source-age and "
                             "--gender are needed")
    parser.add_argument("--face", type=_parse_face, default="largest",
                        help="which face: largest, all, or a face number N (faces are numbered 0, 1, 2, ... "
                             "from left to right; -1 is the rightmost)")
    parser.add_argument("--det-size", type=number_in(MIN_DET_SIZE, MAX_DET_SIZE, integer=True, multiple=32),
                        default=640, help=f"face detector input size, a multiple of 32 in "
                                          f"{MIN_DET_SIZE}..{MAX_DET_SIZE}; larger finds smaller faces")
    parser.add_argument("--det-thresh", type=number_in(0, 1, low_open=True, high_open=True), default=0.5,
                        help="face detector score threshold in (0, 1); lower finds more (and falser) faces")
    parser.add_argument("--min-face-size", type=number_in(0, 100000), default=MIN_FACE_SIZE,
                        help="faces narrower than this (photo pixels) are skipped")
    parser.add_argument("--no-face", choices=["error", "skip"], default="error",
                        help="a photo without a usable face: error (fail), or skip (write it unchanged)")
    parser.add_argument("--reference-inference", action="store_true",
                        help="reproduce the reference inference script instead of the training behaviour "
                             "(docs/method.md; for comparisons with the published images)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_global_options(parser, top_level=False)


def _parse_face(value: str):
    if value in ("all", "largest"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not all, largest or a face number") from None


# The detector's limits, kept here as plain numbers so that `--help` needs no insightface import;
# tests/test_cli_and_imports.py checks them against cradle2cane.faces.detect.
MIN_DET_SIZE, MAX_DET_SIZE, MIN_FACE_SIZE = 160, 2048, 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, formatter_class=HelpFormatter,
                                     description="Cradle2Cane lifespan face aging (two-pass SDXL-Turbo).",
                                     epilog="Run `cradle2cane COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    photo_commands.register(sub, HelpFormatter, _add_photo_options)

    tiny = sub.add_parser("tiny", formatter_class=HelpFormatter,
                          help="write a tiny random model set (for tests and demos; not a real model)",
                          description="Write every model file in the released layout at toy size with random "
                                      "weights, plus a stand-in face detector that finds skin-coloured blobs. "
                                      "For tests and demos: the output is noise, not a face.")
    tiny.add_argument("dir", type=Path, help="folder to create (must be empty or absent)")
    tiny.add_argument("--seed", type=seed_type, default=0, help="seed of the random weights")
    tiny.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    add_global_options(tiny, top_level=False)
    tiny.set_defaults(func=_cmd_tiny)

    download = sub.add_parser("download", formatter_class=HelpFormatter,
                              help="download the released model files with `hf download` (only when you run this)",
                              description="Run the `hf download` commands of the README's model table, each "
                                          "fetching only the files the loader reads.")
    download.add_argument("--models", type=Path, required=True, help="models folder to download into")
    download.add_argument("--base", dest="base_format", choices=["file", "folder"], default="file",
                          help="SDXL-Turbo as the fp16 single file or as a diffusers folder of fp16 weights")
    download.add_argument("--no-vae", action="store_true", help="skip the optional fp16-fix VAE")
    download.add_argument("--print", dest="print_only", action="store_true",
                          help="print the commands instead of running them")
    add_global_options(download, top_level=False)
    download.set_defaults(func=_cmd_download)

    train = sub.add_parser("train", add_help=False, help="train (cradle2cane train --help for its commands)",
                           description="Training: see `cradle2cane train --help`.")
    train.add_argument("training_args", nargs=argparse.REMAINDER)
    train.set_defaults(func=_cmd_train)

    for register in (bench.register, evaluate.register):
        register(sub)
    for name, subparser in sub.choices.items():
        if name != "train":
            subparser.formatter_class = HelpFormatter
            add_global_options(subparser, top_level=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    leading = [a for a in argv[:argv.index("train")] if a in ("--debug", "--quiet")] if "train" in argv else None
    if leading is not None and len(leading) == argv.index("train"):  # the training program parses the rest
        return _cmd_train(argparse.Namespace(training_args=argv[len(leading) + 1:], debug="--debug" in leading))
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parser = parser._subparsers._group_actions[0].choices[args.command]
    args.out_text = str(getattr(args, "out", "") or "")
    if getattr(args, "out", None) is not None and isinstance(args.out, str):
        args.out = Path(args.out)
    configure_logging(args)
    return run_command(args, PROGRAM)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
