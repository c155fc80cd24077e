"""``cradle2cane train`` / ``python -m cradle2cane.training``: prepare data, train (alone or under
``accelerate launch``), show the config. Without a sub-command it trains (``cradle2cane train --models
...`` is ``cradle2cane train train --models ...``).

Every failure on bad input ends with exit status 1 and one readable line on stderr (the traceback
only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

PROG = "cradle2cane train"

# Command-line flags that are shortcuts for configuration keys.
FLAG_KEYS = {
    "models": "models_dir",
    "data": "train_data_list",
    "output": "output_dir",
    "resume": "resume_from_checkpoint",
    "max_steps": "max_train_steps",
    "batch_size": "train_batch_size",
    "mixed_precision": "mixed_precision",
    "seed": "seed",
    "overwrite": "overwrite_output_dir",
}


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file with the keys to change (all keys and their defaults: `config` prints them)")
    parser.add_argument("--set", dest="set_args", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set learning_rate=5e-5 (repeatable; values are YAML)")
    parser.add_argument("--models", default=None, help="models folder (models_dir)")
    parser.add_argument("--data", default=None, help="manifest written by `prepare` (train_data_list)")
    parser.add_argument("--output", default=None, help="output folder (output_dir)")
    parser.add_argument("--resume", default=None, help="'latest', a checkpoint-N name or a path (resume_from_checkpoint)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps (max_train_steps)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch size (train_batch_size)")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="start again in an --output that holds a previous run, deleting its outputs "
                             "(overwrite_output_dir)")


def config_from_args(args: argparse.Namespace):
    from .config import build_config

    overrides = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag, None) is not None}
    return build_config(args.config, overrides=overrides, set_args=args.set_args)


def _cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    result = train(config_from_args(args))
    if result.is_main_process:
        print(f"trained {result.global_step} steps; weights in {result.output_dir}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from .config import dump

    sys.stdout.write(dump(config_from_args(args).to_dict()))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data import prepare_ffhq, prepare_folder

    if args.source == "ffhq":
        report = prepare_ffhq(args.images, args.features, args.out, check_images=not args.no_check_images,
                              overwrite=args.overwrite)
    else:
        report = prepare_folder(args.images, args.labels, args.out, check_images=not args.no_check_images,
                                overwrite=args.overwrite)
    print(report.summary())
    return 0


def _cmd_tiny_extras(args: argparse.Namespace) -> int:
    from .age_model import DEFAULT_FILE, write_tiny_age_regressor
    from .lpips import write_random_lpips

    folder = Path(args.dir)
    lpips, alexnet = write_random_lpips(folder / "lpips", seed=args.seed)
    age = write_tiny_age_regressor(folder / DEFAULT_FILE, seed=args.seed)
    for path in (lpips, alexnet, age):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train Cradle2Cane's identity LoRA and projectors "
                                     "(docs/training.md). Without a sub-command: train.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the LoRA and the two projectors (the default; use `accelerate launch "
                                         "-m cradle2cane.training train ...` for several GPUs)")
    _add_config_arguments(train)
    train.set_defaults(func=_cmd_train)

    config = sub.add_parser("config", help="print the configuration a `train` with the same options would use")
    _add_config_arguments(config)
    config.set_defaults(func=_cmd_config)

    prepare = sub.add_parser("prepare", help="write a labelled manifest from FFHQ or from a folder + label file")
    kinds = prepare.add_subparsers(dest="source", required=True)
    ffhq = kinds.add_parser("ffhq", help="FFHQ images + ffhq-features json labels (one json per image)")
    ffhq.add_argument("--images", required=True, type=Path, help="folder of FFHQ images (searched recursively)")
    ffhq.add_argument("--features", required=True, type=Path, help="ffhq-features json folder (00000.json ...)")
    folder = kinds.add_parser("folder", help="any folder of aligned faces + a CSV/JSON of image,age,gender")
    folder.add_argument("--images", required=True, type=Path)
    folder.add_argument("--labels", required=True, type=Path, help="CSV (image,age,gender header) or JSON")
    for p in (ffhq, folder):
        p.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
        p.add_argument("--no-check-images", action="store_true", help="do not open every image to check it")
        p.add_argument("--overwrite", action="store_true", help="replace an existing manifest (and its skip list)")
    prepare.set_defaults(func=_cmd_prepare)

    tiny = sub.add_parser("tiny-extras", help="write RANDOM stand-ins for the LPIPS and age-regressor weights into a "
                                              "(tiny) models folder - for tests and demos only")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny_extras)
    for p in (train, config, ffhq, folder, tiny):  # --debug also after the sub-command
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train", "config", "prepare", "tiny-extras", "-h", "--help"}
    first = next((a for a in argv if a != "--debug"), None)
    if first not in commands:  # no sub-command: train
        argv.insert(argv.index(first) if first is not None else len(argv), "train")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.debug:
        for name in ("diffusers", "transformers", "accelerate", "PIL"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from cradle2cane.tools.arguments import run_command

    return run_command(args, "training")


if __name__ == "__main__":
    sys.exit(main())
