"""The paper's own pore segmentation: a grayscale threshold inside the particle (Eq. 1 input)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from fracscope.types import Phase

POLARITIES: tuple[str, ...] = ("dark", "bright")
PORE_POLARITY_SETTINGS: tuple[str, ...] = (*POLARITIES, "auto")  # what `pore_polarity` may be set to
# The band just outside the detected particles decides whether an image's pores are filled: within
# RING_PX of a particle, pores between neighbours hold Pt or resin in an infiltrated image and dark matrix
# otherwise; farther away the current collector or binder can dominate either way. Measured shares of the band
# brighter than the particles' median grey: 0-0.02 on dark-pore images (generator looks, 3_phase.tif, the CT
# slice), 0.42-0.88 on infiltrated ones (the generator's binder 5-50 %) and 0.51 on the real Pt-infiltrated
# BSE image (the whole space between particles there: 0.32, a third of it the Al collector).
RING_PX = 6
BRIGHT_RING_SHARE = 0.25


def image_pore_polarity(pixels: np.ndarray, instances: np.ndarray) -> str:
    """"bright" when the band just outside the detected particles is mostly brighter than the particles
    (pores filled with Pt or resin), else "dark" (empty pores); "dark" when either region is empty."""
    inside = instances > 0
    if not inside.any():
        return "dark"
    ring = ndi.binary_dilation(inside, iterations=RING_PX) & ~inside
    if not ring.any():
        return "dark"
    values = np.asarray(pixels)
    particle_grey = float(np.median(values[inside]))
    bright_share = float(np.mean(values[ring] > particle_grey))
    return "bright" if bright_share > BRIGHT_RING_SHARE else "dark"


def check_pore_polarity_setting(setting: str) -> None:
    """Refuse a `pore_polarity` setting other than dark, bright or auto."""
    if setting not in PORE_POLARITY_SETTINGS:
        raise ValueError(f"pore_polarity must be one of {list(PORE_POLARITY_SETTINGS)}, got {setting!r}")


def resolve_pore_polarity(setting: str, pixels: np.ndarray, instances: np.ndarray) -> str:
    """The run's `pore_polarity` ("dark", "bright" or "auto") for one image: auto decides from the image."""
    check_pore_polarity_setting(setting)
    return image_pore_polarity(pixels, instances) if setting == "auto" else setting


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
