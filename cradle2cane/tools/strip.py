"""The lifespan strip: aged photos side by side (or in rows), each labelled with its age."""

from __future__ import annotations

from typing import Sequence

import numpy as np

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def label_image(image: np.ndarray, label: str) -> np.ndarray:
    """``image`` (HxWx3 uint8) with a white band below it holding ``label``, centred."""
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    band = max(16, height // 8)
    canvas = Image.new("RGB", (width, height + band), BACKGROUND)
    canvas.paste(Image.fromarray(np.ascontiguousarray(image[..., :3])), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(int(band * 0.7))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    draw.text(((width - (right - left)) / 2 - left, height + (band - (bottom - top)) / 2 - top), label,
              fill=INK, font=font)
    return np.asarray(canvas)


def lifespan_strip(images: Sequence[np.ndarray], labels: Sequence[str], columns: int = 0,
                   tile: int = 256) -> np.ndarray:
    """A grid of ``images`` (same size, HxWx3/4 uint8), each scaled to ``tile`` pixels high and
    labelled; ``columns`` per row (0: one row). Transparent pixels are shown on white."""
    from PIL import Image

    if len(images) != len(labels) or not images:
        raise ValueError(f"a strip needs one label per image, got {len(images)} images and {len(labels)} labels")
    columns = columns or len(images)
    height, width = images[0].shape[:2]
    size = (max(1, round(width * tile / height)), tile)
    tiles = []
    for image, label in zip(images, labels):
        picture = Image.fromarray(np.ascontiguousarray(image))
        if picture.mode == "RGBA":
            picture = Image.alpha_composite(Image.new("RGBA", picture.size, BACKGROUND + (255,)), picture)
        tiles.append(label_image(np.asarray(picture.convert("RGB").resize(size, Image.LANCZOS)), label))
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    gap = max(2, tile // 64)
    th, tw = tiles[0].shape[:2]
    grid = np.full((len(rows) * th + (len(rows) + 1) * gap, columns * tw + (columns + 1) * gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, labelled in enumerate(row):
            y, x = gap + r * (th + gap), gap + c * (tw + gap)
            grid[y:y + th, x:x + tw] = labelled
    return grid
