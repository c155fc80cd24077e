"""Where each released file lives, and errors that say where to get it.

Standalone layout (the reference README's ``models/``, also the ComfyUI ``models/cradle2cane``)::

    models/
      sdxl-turbo/                 diffusers folder   (or a single file, see BASE_SINGLE_FILES)
      sdxl-vae-fp16-fix/          optional, diffusers AutoencoderKL folder
      clip-vit-large-patch14/     transformers folder (both towers + tokenizer)
      backbone.pth                ArcFace iResNet state dict
      Cradle2Cane/                pytorch_lora_weights.safetensors, face_project.bin,
                                  clip_project.bin, hparams.yml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import downloads as D

logger = logging.getLogger(__name__)

BASE_DIR = "sdxl-turbo"
BASE_SINGLE_FILES = ("sd_xl_turbo_1.0_fp16.safetensors", "sd_xl_turbo_1.0.safetensors")
VAE_DIR = "sdxl-vae-fp16-fix"
CLIP_DIR = "clip-vit-large-patch14"
ARCFACE_FILE = "backbone.pth"
C2C_DIR = "Cradle2Cane"
LORA_FILE = "pytorch_lora_weights.safetensors"
HPARAMS_FILE = "hparams.yml"


def _source(download: D.Download) -> str:
    return f"{download.url} ({download.shell_line()})"


SOURCES = {
    BASE_DIR: _source(D.BASE_FOLDER),
    "single": _source(D.BASE_SINGLE_FILE),
    VAE_DIR: _source(D.VAE),
    CLIP_DIR: _source(D.CLIP),
    C2C_DIR: _source(D.CRADLE2CANE),
}


class ModelFileError(FileNotFoundError):
    """A model file is missing or does not have the expected content."""


def source_of(name: str) -> str:
    return SOURCES.get(name, SOURCES[C2C_DIR])


def missing(path: Path, searched: Path, expected: str, source: str) -> ModelFileError:
    return ModelFileError(
        f"{path.name} not found in {searched} (expected {expected}). Get it from {source}."
    )


def mismatch(path: Path, problem: str, source: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}. Re-download it from {source}.")


def one_line(exc: BaseException, limit: int | None = 300) -> str:
    """A library's error message as one short line: its first non-empty line, cut at ``limit``
    characters (None: not cut), saying how much was left out (the whole text stays in the chained
    traceback, which ``--debug`` prints)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "Error(s) in loading state_dict for X:" says nothing alone
        lines[:2] = [f"{lines[0]} {lines[1]}"]
    text = lines[0] if lines else type(exc).__name__
    if limit is not None and len(text) > limit:
        text = text[:limit].rstrip() + " ..."
    if len(lines) > 1:
        text += f" (+{len(lines) - 1} more lines)"
    return text


@dataclass(frozen=True)
class ModelPaths:
    """The files of one Cradle2Cane installation, resolved and checked to exist."""

    base: Path
    base_config: Path | None
    vae: Path | None
    clip: Path
    arcface: Path
    lora: Path
    face_projector: Path
    clip_projector: Path
    hparams: Path | None

    @classmethod
    def resolve(cls, models_dir: str | Path, base: str | Path | None = None,
                cradle2cane_dir: str | Path | None = None, base_config: str | Path | None = None) -> "ModelPaths":
        """Find every file under ``models_dir``; ``base``/``cradle2cane_dir`` override their parts."""
        root = Path(models_dir).expanduser()
        if not root.is_dir():
            raise ModelFileError(f"models folder {root} does not exist. Create it and download the "
                                 f"models into it (see the README's model table).")
        c2c = Path(cradle2cane_dir).expanduser() if cradle2cane_dir else root / C2C_DIR
        if not c2c.is_dir() and (root / LORA_FILE).is_file():
            c2c = root  # the Cradle2Cane files directly in the given folder
        base_path, config = resolve_base(root, base, base_config)
        clip = root / CLIP_DIR
        if not (clip / "config.json").is_file():
            raise missing(clip / "config.json", clip, "the openai/clip-vit-large-patch14 transformers folder",
                          source_of(CLIP_DIR))
        arcface = root / ARCFACE_FILE
        if not arcface.is_file() and (c2c / ARCFACE_FILE).is_file():
            arcface = c2c / ARCFACE_FILE
        files = {}
        for key, folder, name, expected in (
            ("arcface", arcface.parent, arcface.name, "the ArcFace iResNet-100 state dict"),
            ("lora", c2c, LORA_FILE, "the Cradle2Cane identity LoRA"),
            ("face_projector", c2c, "face_project.bin", "the face projector state dict"),
            ("clip_projector", c2c, "clip_project.bin", "the CLIP projector state dict"),
        ):
            path = folder / name
            if not path.is_file():
                raise missing(path, folder, expected, source_of(C2C_DIR))
            files[key] = path
        hparams = c2c / HPARAMS_FILE
        vae = root / VAE_DIR
        return cls(base=base_path, base_config=config, vae=vae if (vae / "config.json").is_file() else None,
                   clip=clip, hparams=hparams if hparams.is_file() else None, **files)



def find_base(root: Path) -> Path:
    """The SDXL-Turbo base in a models folder: ``sdxl-turbo/`` (diffusers) or one of the single
    files, in that order; ``ModelFileError`` saying what was expected otherwise."""
    root = Path(root)
    if (root / BASE_DIR / "model_index.json").is_file():
        return root / BASE_DIR
    for name in BASE_SINGLE_FILES:
        if (root / name).is_file():
            return root / name
    raise ModelFileError(
        f"no SDXL-Turbo base found in {root}: expected the folder {BASE_DIR}/ or one of "
        f"{', '.join(BASE_SINGLE_FILES)}. Get it from {source_of(BASE_DIR)} or {source_of('single')}."
    )


def resolve_base(root: Path, base: str | Path | None = None,
                 base_config: str | Path | None = None) -> tuple[Path, Path | None]:
    """(base, config folder) for a models folder: ``base`` if given (checked), else ``find_base``.
    A single file carries no configs: the config folder is ``base_config`` or ``root/sdxl-turbo``
    when it holds a ``model_index.json`` (the tiny test set ships one), else None (the published
    SDXL-Turbo configs bundled with this package are used)."""
    base_path = Path(base).expanduser() if base else find_base(root)
    if not base_path.exists():
        raise missing(base_path, base_path.parent, "an SDXL-Turbo diffusers folder or single-file checkpoint",
                      source_of(BASE_DIR))
    if base_path.is_file():
        candidate = Path(base_config) if base_config else Path(root) / BASE_DIR
        return base_path, candidate if (candidate / "model_index.json").is_file() else None
    if not (base_path / "model_index.json").is_file():
        raise missing(base_path / "model_index.json", base_path, "a diffusers SDXL-Turbo folder", source_of(BASE_DIR))
    return base_path, None
