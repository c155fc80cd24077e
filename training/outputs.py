"""What a training run writes into ``output_dir``, and the checks made on it before any model is
loaded: a previous run is never replaced unless asked, the folder must be writable, and a
checkpoint to resume must be readable. Every problem is one line naming the file."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cradle2cane.loading import paths as W
from cradle2cane.loading.state_dicts import unreadable

from .checkpoints import CHECKPOINT_PREFIX, STATE_FILE
from .data import Sample, check_manifest_images
from .models import RELEASED_FILES

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "config.yml"
VALIDATION_DIR = "validation"


class OutputError(RuntimeError):
    """The output folder or a checkpoint in it cannot be used as asked."""


def previous_run(output_dir: Path, logging_dir: str) -> list[Path]:
    """The files and folders a training run wrote into ``output_dir`` (empty when it has none)."""
    if not output_dir.is_dir():
        return []
    names = {*RELEASED_FILES, LOG_FILE, CONFIG_FILE, VALIDATION_DIR, logging_dir}
    return sorted(p for p in output_dir.iterdir() if p.name in names or p.name.startswith(CHECKPOINT_PREFIX))


def check_output_dir(output_dir: Path, logging_dir: str, resuming: bool, overwrite: bool) -> list[Path]:
    """Refuse to start a new run over a previous one unless ``overwrite``, and an output folder that
    cannot be written; returns the previous run's outputs that ``overwrite`` replaces. Nothing is
    created or deleted here."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"output_dir {output_dir} is a file, not a folder")
    found = [] if resuming else previous_run(output_dir, logging_dir)
    if found and not overwrite:
        shown = ", ".join(p.name for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise OutputError(f"output_dir {output_dir} already holds a training run ({shown}); continue it with "
                          f"--resume latest, choose another --output, or pass --overwrite to delete those outputs "
                          f"and start again")
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder is created by the run: its nearest existing parent must be writable
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputError(f"output_dir {output_dir} cannot be written ({exc.strerror or exc} in {existing}); "
                          f"choose a folder you can write to") from exc
    return found


def delete_outputs(paths: list[Path]) -> None:
    for path in paths:
        logger.warning("--overwrite: deleting %s of the previous run", path)
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint, checked: a JSON object with an integer ``global_step``."""
    path = checkpoint / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputError(f"{checkpoint} is not a complete training checkpoint ({STATE_FILE} is missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputError(f"{path}: not readable JSON ({exc}); resume from another checkpoint") from exc
    step = state.get("global_step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise OutputError(f"{path}: expected {{\"global_step\": <step >= 0>, ...}}, got {json.dumps(state)[:200]}; "
                          f"resume from another checkpoint")
    return state


def check_checkpoint(checkpoint: Path) -> None:
    """Before resuming: the state file, the released weights and every optimiser/scheduler/RNG
    file are readable (headers and archive directories only: milliseconds)."""
    read_trainer_state(checkpoint)
    for name in RELEASED_FILES[:3]:
        if not (checkpoint / name).is_file():
            raise OutputError(f"checkpoint {checkpoint} is incomplete: {name} is missing; resume from another "
                              f"checkpoint")
    for path in sorted(checkpoint.iterdir()):
        if path.is_file() and (problem := unreadable(path)):
            raise OutputError(f"{path}: {problem}; resume from another checkpoint")


def preflight(cfg, samples: list[Sample], resume_from: Path | None) -> None:
    """Everything a run can check before loading a model, cheapest first; with ``--overwrite`` the
    previous run's outputs are deleted only after all of it passed. Under ``accelerate launch`` the
    first process owns the output folder and each process checks its share of images."""
    rank, processes = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    replaced = []
    if rank == 0:
        replaced = check_output_dir(cfg.path("output_dir"), cfg.logging_dir, resume_from is not None,
                                    cfg.overwrite_output_dir)
    if resume_from is not None:
        check_checkpoint(resume_from)
    if cfg.check_images:
        check_manifest_images(samples, cfg.path("train_data_list"), share=(rank, processes))
    delete_outputs(replaced)  # only once every check has passed


def restore(accelerator, checkpoint: Path) -> None:
    """``accelerator.load_state`` with its failures as one line naming the checkpoint."""
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as exc:  # torch, accelerate: many types, often without the file name
        raise OutputError(f"{checkpoint}: cannot restore the optimiser/scheduler/RNG state ({type(exc).__name__}: "
                          f"{W.one_line(exc)}); resume from another checkpoint") from exc
