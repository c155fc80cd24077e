"""Training checkpoints: finding one to resume from, saving one, and accelerate's hooks that write
the trainable parts in the released layout (so any checkpoint loads into the core as it is)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from cradle2cane.files.atomic import write_text_atomic

from .config import Config, ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    try:
        return int(name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        return None


def list_checkpoints(output_dir: Path, complete_only: bool = True) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None
             and (not complete_only or (p / STATE_FILE).is_file())]
    return sorted(found, key=checkpoint_step)


def find_checkpoint(output_dir: Path, spec: str) -> Path:
    """``latest`` (newest complete checkpoint-N), a folder name inside output_dir, or a path."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"resume_from_checkpoint=latest: no complete {CHECKPOINT_PREFIX}N folder in "
                              f"{output_dir}; start without resume_from_checkpoint")
        return found[-1]
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [output_dir / path, path]
    for candidate in candidates:
        if candidate.is_dir():
            if not (candidate / STATE_FILE).is_file():
                raise ConfigError(f"{candidate} is not a complete training checkpoint ({STATE_FILE} is missing)")
            return candidate
    available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
    raise ConfigError(f"checkpoint {spec!r} not found (looked in {', '.join(str(c) for c in candidates)}); "
                      f"checkpoints in {output_dir}: {available}")


def register_hooks(accelerator, parts, cfg: Config) -> None:
    """accelerate's save/load hooks: LoRA and projectors go out in the released layout."""
    from .models import hparams, save_released

    ours = (parts.unet, parts.face_projector, parts.clip_projector)

    def is_ours(model) -> bool:
        return any(accelerator.unwrap_model(model) is m for m in ours)

    def save_hook(models, weights, output_dir):
        # LoRA and projectors go out in the released layout (loadable by the core as they are);
        # accelerate keeps only what remains (the discriminator) plus optimisers and RNG states.
        if accelerator.is_main_process:
            save_released(output_dir, parts.unet, parts.face_projector, parts.clip_projector, parts.lora_config,
                          hparams(cfg, parts.settings))
        for i in reversed(range(len(models))):
            if is_ours(models[i]) and i < len(weights):
                weights.pop(i)

    def load_hook(models, input_dir):
        for i in reversed(range(len(models))):
            if is_ours(models[i]):
                models.pop(i)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

def save_checkpoint(accelerator, cfg: Config, output_dir: Path, step: int, epoch: int, micro_step: int) -> Path:
    """``output_dir/checkpoint-<step>``, complete once its state file is written (last)."""
    path = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        if cfg.checkpoints_total_limit is not None:
            existing = list_checkpoints(output_dir, complete_only=False)
            for old in existing[:max(0, len(existing) - cfg.checkpoints_total_limit + 1)]:
                logger.info("removing old checkpoint %s (checkpoints_total_limit=%d)", old,
                            cfg.checkpoints_total_limit)
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        state = {"global_step": step, "epoch": epoch, "micro_step": micro_step}
        write_text_atomic(path / STATE_FILE, json.dumps(state, indent=2))  # written last: complete
        logger.info("checkpoint saved to %s", path)
    accelerator.wait_for_everyone()
    return path
