"""What the command lines share: model options, loading the model they name, the progress bar,
and running a sub-command so that any failure is one readable line on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ..runtime import MEMORY_MODES
from ..runtime.precision import AUTO, PRECISIONS


class UsageError(ValueError):
    """Bad command-line input."""


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
                        help="weights precision (default: fp16 on CUDA, fp32 on CPU)")


def load_model(args: argparse.Namespace, cradle2cane_dir: Path | None = None):
    """The model the options name; ``cradle2cane_dir`` replaces ``<models>/Cradle2Cane``."""
    from ..pipeline import Cradle2Cane

    return Cradle2Cane.from_pretrained(args.models, base=args.base, cradle2cane_dir=cradle2cane_dir,
                                       device=args.device, dtype=args.dtype,
                                       memory=getattr(args, "memory_mode", "default"))


def progress_bar(args: argparse.Namespace) -> Callable[[int, int], None] | None:
    if args.quiet:
        return None
    from tqdm import tqdm

    bar = None

    def update(step: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="denoising", unit="step", file=sys.stderr, leave=False)
        bar.update(step - bar.n)
        if step >= total:
            bar.close()

    return update


def run_command(args: argparse.Namespace, program: str) -> int:
    """Run the chosen sub-command: exit 130 on Ctrl-C, and on any error one readable line on
    stderr and exit 1 (the traceback only with ``--debug``)."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from ..loading.paths import one_line

        print(f"{program} {args.command}: error: {one_line(exc, limit=None)}", file=sys.stderr)
        return 1


def quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    # The CLI owns its process, so it may silence the libraries' loading bars for good.
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
