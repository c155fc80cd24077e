"""The released files and the ``hf download`` command that fetches exactly them.

One table, used by the loader's error messages and by ``cradle2cane download`` (which only runs
these commands when asked: nothing is ever downloaded implicitly). ``--include`` patterns keep
each download to the files the loader reads: the fp16 single file, or the diffusers folder's fp16
variants, never every weight format a repository holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

HF = "https://huggingface.co"


@dataclass(frozen=True)
class Download:
    """One ``hf download`` call: ``repo`` files matching ``include`` into ``<models>/<local_dir>``."""

    name: str
    what: str
    repo: str
    include: tuple[str, ...]
    local_dir: str = "."

    def command(self, models: str = "models") -> list[str]:
        """The argument list, e.g. ``["hf", "download", repo, "--include", "*.json", ...]``."""
        target = str(PurePosixPath(models) / self.local_dir) if self.local_dir != "." else models
        args = ["hf", "download", self.repo]
        for pattern in self.include:
            args += ["--include", pattern]
        return args + ["--local-dir", target]

    def shell_line(self, models: str = "models") -> str:
        """The command as one line to paste into a shell (POSIX shells, cmd and PowerShell alike:
        arguments with wildcards or spaces in double quotes)."""
        return " ".join(f'"{a}"' if any(c in a for c in '*? ') else a for a in self.command(models))

    @property
    def url(self) -> str:
        return f"{HF}/{self.repo}"


BASE_SINGLE_FILE = Download("base-file", "SDXL-Turbo base, single file (fp16)", "stabilityai/sdxl-turbo",
                            ("sd_xl_turbo_1.0_fp16.safetensors",))
BASE_FOLDER = Download("base-folder", "SDXL-Turbo base, diffusers folder (fp16 weights only)", "stabilityai/sdxl-turbo",
                       ("*.json", "*.txt", "*.fp16.safetensors"), "sdxl-turbo")
VAE = Download("vae", "VAE that is stable in fp16 (optional, recommended)", "madebyollin/sdxl-vae-fp16-fix",
               ("config.json", "diffusion_pytorch_model.safetensors"), "sdxl-vae-fp16-fix")
CLIP = Download("clip", "CLIP ViT-L/14, both towers and the tokenizer", "openai/clip-vit-large-patch14",
                ("*.json", "*.txt", "model.safetensors"), "clip-vit-large-patch14")
CRADLE2CANE = Download("cradle2cane", "ArcFace backbone.pth and the Cradle2Cane folder (LoRA, projectors, hparams.yml)",
                       "byliutao/Cradle2Cane", ("backbone.pth", "Cradle2Cane/*"))

DOWNLOADS = {d.name: d for d in (BASE_SINGLE_FILE, BASE_FOLDER, VAE, CLIP, CRADLE2CANE)}


def download_plan(base: str = "file", vae: bool = True) -> list[Download]:
    """What a complete models folder needs: the base as a single file or a folder, the optional
    fp16-fix VAE, CLIP-L and the Cradle2Cane files."""
    if base not in ("file", "folder"):
        raise ValueError(f"base must be 'file' or 'folder', got {base!r}")
    plan = [BASE_SINGLE_FILE if base == "file" else BASE_FOLDER]
    if vae:
        plan.append(VAE)
    return plan + [CLIP, CRADLE2CANE]
