"""The paper's own pore segmentation: a grayscale threshold inside the particle (Eq. 1 input)."""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu

from fracscope.types import Phase


def threshold_phases(pixels: np.ndarray, mask: np.ndarray, polarity: str = "dark") -> np.ndarray:
    """Phase map of one particle from a global Otsu threshold over its section.

    This mirrors Li et al. (2024): pores are the pixels on the pore side of a single
    grayscale threshold. It cannot tell cracks from pores, so every void is a pore.

    Parameters
    ----------
    pixels : ndarray, shape (H, W)
        Grayscale intensities (any dtype).
    mask : ndarray of bool, shape (H, W)
        The filled particle section; the threshold is computed over these pixels only.
    polarity : {"dark", "bright"}
        Whether pores are darker (empty) or brighter (Pt-filled) than the solid.

    Returns
    -------
    ndarray of uint8
        0 outside the mask, 1 solid, 2 pore.
    """
    if polarity not in ("dark", "bright"):
        raise ValueError(f"polarity must be 'dark' or 'bright', got {polarity!r}")
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, np.uint8)
    values = np.asarray(pixels, dtype=np.float32)[mask]
    out[mask] = Phase.SOLID
    if values.size < 2 or values.min() == values.max():
        return out
    t = threshold_otsu(values)
    pore = values < t if polarity == "dark" else values > t
    out[mask] = np.where(pore, Phase.PORE, Phase.SOLID)
    return out
