"""Scenes shared by the tests: discs, lumpy particles, generated electrode fields written as files.

Imported plainly (``from scenes import disc``): pytest puts tests/ on the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean mask of the pixels within `radius` of `centre` (edge included)."""
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def lumpy_disc(shape: tuple[int, int], cy: float, cx: float, r: float, rng: np.random.Generator,
               amplitude: tuple[float, float] = (0.01, 0.04), harmonics: tuple[int, ...] = (3, 5, 8)) -> np.ndarray:
    """Boolean mask of a disc whose radius wobbles with a few low harmonics (a particle-like outline)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = sum(rng.uniform(*amplitude) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in harmonics)
    return np.hypot(yy - cy, xx - cx) <= r * (1 + wobble)


def write_fields(folder: Path, items) -> dict[Path, object]:
    """Write generated fields (`fracscope.synth` AnnotatedImages) as TIFFs with their pixel size.

    Returns each file's path with its item (the ground truth).
    """
    from fracscope.io import SEMTags, write_sem_tiff

    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, item in enumerate(items):
        path = write_sem_tiff(folder / f"field{i:03d}.tif", item.image.pixels,
                              SEMTags(imagej_pixel_size_um=item.image.pixel_size_um))
        truth[path] = item
    return truth
