"""Validation during training: fixed faces x target ages, rendered by the core's own pipeline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cradle2cane.files.labels import labels_from_name

from .data import DatasetError, Sample, load_face

logger = logging.getLogger(__name__)


@dataclass
class ValidationSet:
    faces: torch.Tensor  # [N,3,R,R] 0..1
    source_ages: list[int]
    genders: list[str]
    names: list[str]
    target_ages: list[int]


def build_validation_set(images: Sequence[str] | None, count: int, samples: Sequence[Sample], target_ages: Sequence[int],
                         resolution: int) -> ValidationSet | None:
    """``images`` (labels from the manifest, else from names like ``23_male.png``) or the first
    ``count`` manifest faces; None when there is nothing to render."""
    if not target_ages:
        return None
    chosen: list[Sample] = []
    if images:
        by_path = {s.image.resolve(): s for s in samples}
        for name in images:
            path = Path(name).expanduser()
            if not path.is_file():
                raise DatasetError(f"validation image {path} does not exist")
            sample = by_path.get(path.resolve())
            if sample is None:
                try:
                    labels = labels_from_name(path)
                except ValueError as exc:
                    raise DatasetError(f"validation image {path}: {exc}") from None
                if labels is None:
                    raise DatasetError(f"validation image {path}: no age/gender (it is not in the manifest and its "
                                       f"name is not like 23_male.png)")
                sample = Sample(path, *labels)
            chosen.append(sample)
    else:
        chosen = list(samples[:count])
    if not chosen:
        return None
    faces = torch.stack([load_face(s.image, resolution) for s in chosen])
    return ValidationSet(faces, [s.age for s in chosen], [s.gender for s in chosen], [s.image.name for s in chosen],
                         [int(a) for a in target_ages])


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(tile)
    draw = ImageDraw.Draw(image)
    height = max(10, tile.shape[0] // 12)
    draw.rectangle([0, 0, tile.shape[1], height], fill=(0, 0, 0))
    draw.text((2, 0), text, fill=(255, 255, 255))
    return np.asarray(image)


def render_grid(model, data: ValidationSet, seed: int = 0, batch_size: int = 8) -> np.ndarray:
    """Rows: faces; columns: the input, then each target age. HxWx3 uint8."""
    from cradle2cane.files.images import to_uint8

    with torch.no_grad():
        result = model(data.faces, data.target_ages, data.source_ages, data.genders, seed=seed, batch_size=batch_size)
    ages = len(data.target_ages)
    rows = []
    for b in range(data.faces.shape[0]):
        tiles = [_caption(to_uint8(data.faces[b]), f"{data.source_ages[b]} {data.genders[b]}")]
        tiles += [_caption(to_uint8(result.images[b * ages + j]), f"-> {age}") for j, age in enumerate(data.target_ages)]
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def save_grid(model, data: ValidationSet, path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    from cradle2cane.files.images import save_image_atomic

    grid = render_grid(model, data, seed=seed)
    save_image_atomic(grid, path)
    logger.info("validation grid written to %s", path)
    return path, grid
