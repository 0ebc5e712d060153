"""The paper's own pore segmentation: a grayscale threshold inside the particle (Eq. 1 input)."""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu

from fracscope.polarity import POLARITIES
from fracscope.types import Phase


def image_threshold(pixels: np.ndarray, polarity: str = "dark") -> float | None:
    """The paper's global threshold for one image: Otsu over all its pixels.

    With dark (empty) pores the image is bright oxide against dark pores and dark
    matrix, and one Otsu threshold over the whole image separates them, as a global
    ImageJ auto-threshold does. Pt-filled (bright) pores share no grey level with the
    matrix, so for them this returns None and `threshold_phases` thresholds each section.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be 'dark' or 'bright', got {polarity!r}")
    values = np.asarray(pixels)
    if polarity == "bright" or values.size < 2 or values.min() == values.max():
        return None
    return float(threshold_otsu(values))


def threshold_phases(pixels: np.ndarray, mask: np.ndarray, polarity: str = "dark",
                     threshold: float | None = None) -> np.ndarray:
    """Phase map of one particle from one grayscale threshold.

    This mirrors Li et al. (2024): pores are the pixels on the pore side of a single
    grayscale threshold. It cannot tell cracks from pores, so every void is a pore.

    Parameters
    ----------
    pixels : ndarray, shape (H, W)
        Grayscale intensities (any dtype).
    mask : ndarray of bool, shape (H, W)
        The filled particle section.
    polarity : {"dark", "bright"}
        Whether pores are darker (empty) or brighter (Pt-filled) than the solid.
    threshold : float, optional
        The grey level, e.g. `image_threshold` of the whole image (the paper's global
        threshold). None: Otsu over the section's own pixels, which splits the solid's
        grey levels when pores are few; use it only for bright pores.

    Returns
    -------
    ndarray of uint8
        0 outside the mask, 1 solid, 2 pore.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be 'dark' or 'bright', got {polarity!r}")
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, np.uint8)
    values = np.asarray(pixels, dtype=np.float32)[mask]
    out[mask] = Phase.SOLID
    if threshold is None and (values.size < 2 or values.min() == values.max()):
        return out
    t = threshold_otsu(values) if threshold is None else threshold
    pore = values < t if polarity == "dark" else values > t
    out[mask] = np.where(pore, Phase.PORE, Phase.SOLID)
    return out
