"""A contact sheet of the first images of a synthetic set, with their ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fracscope.types import AnnotatedImage

_PHASE_RGB = np.array([[0, 0, 0], [90, 90, 90], [40, 120, 255], [255, 60, 40]], np.uint8)


def _to_u8(pixels: np.ndarray) -> np.ndarray:
    p = pixels.astype(np.float32)
    return np.clip(255.0 * p / max(float(np.iinfo(pixels.dtype).max), 1.0), 0, 255).astype(np.uint8)


def write_preview(items: Sequence[AnnotatedImage], path: str | Path, tile_px: int = 256) -> Path:
    """Save a PNG: one column per image, SEM image above its phase map (pore blue, crack red)."""
    from PIL import Image

    cols = []
    for it in items:
        img = Image.fromarray(_to_u8(it.image.pixels)).convert("RGB").resize((tile_px, tile_px), Image.BILINEAR)
        ph = Image.fromarray(_PHASE_RGB[np.clip(it.phases, 0, 3)]).resize((tile_px, tile_px), Image.NEAREST)
        cols.append(np.vstack([np.asarray(img), np.asarray(ph)]))
    sheet = np.hstack(cols) if cols else np.zeros((2 * tile_px, tile_px, 3), np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path
