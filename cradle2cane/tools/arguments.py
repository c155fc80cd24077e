"""What the command lines share: option types that check values as they are parsed, the global
options (``--debug``, ``--quiet``, before or after the sub-command), the model options and loading,
the progress bar, output that never fails on an odd path, and running a sub-command so that any
failure is one readable line on stderr and a kill or Ctrl-C leaves no temporary file."""

from __future__ import annotations

import argparse
import logging
import math
import re
import signal
import sys
from pathlib import Path
from typing import Callable, TextIO

from ..method.seeds import MAX_SEED
from ..runtime import MEMORY_MODES
from ..runtime.precision import AUTO, PRECISIONS

MAX_ERROR_LENGTH = 500
"""Longer error texts are cut on the command line; ``--debug`` prints them whole."""


class UsageError(ValueError):
    """Bad command-line input."""


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every ``finally`` (the atomic
    writer's clean-up of its temporary file) still runs."""


# ----------------------------------------------------------------------------- value types


def seed_type(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..2**64-1 ({MAX_SEED})")
    return value


def number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
              integer: bool = False, multiple: int = 1) -> Callable[[str], float]:
    """An argparse type: a number between ``low`` and ``high`` (open ends excluded)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if integer else ''}number") from None
        if math.isnan(value) or value < low or value > high or (low_open and value == low) or \
                (high_open and value == high):
            raise argparse.ArgumentTypeError(f"{text} is outside {left}{low:g}, {high:g}{right}")
        if integer and value % multiple:
            raise argparse.ArgumentTypeError(f"{text} is not a multiple of {multiple}")
        return value

    parse.__name__ = "number"
    return parse


# ----------------------------------------------------------------------------- options


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (unless the help already says it or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or \
                action.option_strings == [] or isinstance(action, argparse._HelpAction):
            return text
        return text + " (default: %(default)s)"


def add_global_options(parser: argparse.ArgumentParser, top_level: bool = True) -> None:
    """``--debug`` and ``--quiet``: on the program and again on each sub-command, so they work on
    either side of the sub-command's name."""
    default = False if top_level else argparse.SUPPRESS
    for flag, text in (("--debug", "full tracebacks and debug logs"),
                       ("--quiet", "print only errors and results (no progress bar, no warnings)")):
        if flag not in parser._option_string_actions:
            parser.add_argument(flag, action="store_true", default=default,
                                help=text if top_level else argparse.SUPPRESS)


def add_model_arguments(parser: argparse.ArgumentParser, models_help: str | None = None,
                        memory: bool = True) -> None:
    """The options every command that loads the models shares. ``models_help`` makes --models
    optional with that help text; ``memory`` adds --memory (one mode for the loaded model)."""
    parser.add_argument("--models", required=models_help is None, type=Path, default=None,
                        help=models_help or "models folder (see the README's model table)")
    if memory:
        parser.add_argument("--memory", dest="memory_mode", default="default", choices=MEMORY_MODES,
                            help="default: all on the device; offload: model CPU offload; "
                                 "low-vram: offload plus VAE slicing/tiling")
    parser.add_argument("--base", type=Path, default=None,
                        help="SDXL-Turbo diffusers folder or single .safetensors file (default: found in --models)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=[AUTO, *PRECISIONS],
                        help="weights precision (auto: fp16 on CUDA, fp32 on CPU)")


def load_model(args: argparse.Namespace, cradle2cane_dir: Path | None = None):
    """The model the options name; ``cradle2cane_dir`` replaces ``<models>/Cradle2Cane``."""
    from ..pipeline import Cradle2Cane

    if not args.debug:  # the libraries are imported by now: their loading bars off for good (the CLI owns its process)
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    return Cradle2Cane.from_pretrained(args.models, base=args.base, cradle2cane_dir=cradle2cane_dir,
                                       device=args.device, dtype=args.dtype,
                                       memory=getattr(args, "memory_mode", "default"))


def progress_bar(args: argparse.Namespace, desc: str = "denoising", unit: str = "step"
                 ) -> Callable[[int, int], None] | None:
    if args.quiet:
        return None
    from tqdm import tqdm

    bar = None

    def update(step: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
        bar.update(step - bar.n)
        if step >= total:
            bar.close()

    return update


# ----------------------------------------------------------------------------- output and running


def say(text: object, file: TextIO | None = None) -> None:
    """``print`` that never fails: characters the stream's encoding cannot show (a non-UTF-8 file
    name under a strict ASCII locale) are written as escapes instead of raising."""
    stream = sys.stdout if file is None else file
    line = f"{text}\n"
    try:
        stream.write(line)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(line.encode(encoding, "backslashreplace").decode(encoding))
    stream.flush()


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def _option_spelling(message: str, parser: argparse.ArgumentParser | None) -> str:
    """Core errors name parameters (``det_thresh``); on the command line name the option
    (``--det-thresh``) instead."""
    if parser is None:
        return message
    options = {action.dest: action.option_strings[-1] for action in parser._actions
               if action.option_strings and "_" in action.dest and action.option_strings[-1].startswith("--")}
    if not options:
        return message
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(options, key=len, reverse=True))) + r")\b")
    return pattern.sub(lambda m: options[m[1]], message)


def run_command(args: argparse.Namespace, program: str) -> int:
    """Run the chosen sub-command: exit 130 on Ctrl-C and 143 on SIGTERM (both after the atomic
    writer removed its temporary file), and on any error one readable line on stderr and exit 1
    (the traceback only with ``--debug``)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        say(f"{program}: interrupted", sys.stderr)
        return 130
    except Terminated:
        say(f"{program}: terminated", sys.stderr)
        return 143
    except Exception as exc:
        if args.debug:
            raise
        from ..loading.paths import one_line

        text = one_line(exc, limit=MAX_ERROR_LENGTH)  # a library's whole report (every mismatched tensor) cut
        say(f"{program} {args.command}: error: {_option_spelling(text, getattr(args, 'parser', None))}", sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def configure_logging(args: argparse.Namespace) -> None:
    """Warnings and up by default, errors only with ``--quiet``, everything with ``--debug``; the
    libraries' own chatter (progress bars, advice to install packages this project does not use)
    stays off unless ``--debug``."""
    level = logging.DEBUG if args.debug else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    if not args.debug:
        quiet_libraries()


def quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "diffusers", "huggingface_hub", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
