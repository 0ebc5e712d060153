"""Size, crack and fragment measurements of one particle section, in physical units."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from fracscope.measure.porosity import PROFILE_FRACTIONS, crack_pct, porosity_pct, radial_profile
from fracscope.types import Phase


def area_um2(mask: np.ndarray, pixel_size_um: float) -> float:
    """Section area in µm² (pixel count × pixel_size_um²)."""
    return float(np.count_nonzero(mask)) * pixel_size_um**2


def eq_diameter_um(mask: np.ndarray, pixel_size_um: float) -> float:
    """Diameter in µm of the circle with the section's area."""
    return 2.0 * math.sqrt(area_um2(mask, pixel_size_um) / math.pi)


def crack_length_um(crack_mask: np.ndarray, pixel_size_um: float) -> float:
    """Total crack length in µm, from the 8-connected skeleton of the crack pixels.

    Each skeleton step counts 1 pixel (edge neighbours) or sqrt(2) pixels (diagonal
    neighbours), so a straight line of n pixels measures n - 1 pixel lengths, and a
    single isolated pixel measures 0.
    """
    crack_mask = np.asarray(crack_mask, dtype=bool)
    if not crack_mask.any():
        return 0.0
    skel = skeletonize(crack_mask)
    s = skel.astype(np.uint8)
    # Count each neighbour pair once: right, down (length 1); down-right, down-left (sqrt 2).
    straight = np.count_nonzero(s[:, :-1] & s[:, 1:]) + np.count_nonzero(s[:-1, :] & s[1:, :])
    diag = np.count_nonzero(s[:-1, :-1] & s[1:, 1:]) + np.count_nonzero(s[:-1, 1:] & s[1:, :-1])
    # A diagonal pair already joined through an edge neighbour (an L-corner) is not a new step.
    corner = np.count_nonzero(s[:-1, :-1] & s[1:, 1:] & (s[:-1, 1:] | s[1:, :-1])) + np.count_nonzero(
        s[:-1, 1:] & s[1:, :-1] & (s[:-1, :-1] | s[1:, 1:])
    )
    return float(straight + math.sqrt(2.0) * (diag - corner)) * pixel_size_um


def count_fragments(mask: np.ndarray, crack_mask: np.ndarray, min_fraction: float = 0.01) -> int:
    """Bodies left when the crack pixels are removed from the particle mask.

    Fragments are 4-connected, so a crack one pixel wide on a diagonal still separates.
    Fragments smaller than `min_fraction` of the mask are crumbs, not bodies, and do not
    count. 0 for an empty mask; 1 for an intact or mildly damaged particle; >= 2 for a
    broken one.
    """
    mask = np.asarray(mask, dtype=bool)
    body = mask & ~np.asarray(crack_mask, dtype=bool)
    n_mask = int(mask.sum())
    if n_mask == 0:
        return 0
    labels, n = ndi.label(body)
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int(np.count_nonzero(sizes >= max(1.0, min_fraction * n_mask)))


def measure_particle(
    mask: np.ndarray,
    phases: np.ndarray,
    pixel_size_um: float | None,
    fractions: tuple[float, ...] = PROFILE_FRACTIONS,
) -> dict[str, float]:
    """Every per-particle measurement, as flat table columns.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        The filled particle section.
    phases : ndarray of uint8, shape (H, W)
        Phase codes (1 solid, 2 pore, 3 crack); only pixels inside `mask` are read.
    pixel_size_um : float or None
        Pixel edge in µm. With None, lengths and areas are reported in pixels (the
        `_um`/`_um2` columns then hold pixel units; callers must say so).

    Returns
    -------
    dict
        area_um2, eq_diameter_um, porosity_pct, crack_pct, crack_length_um,
        n_fragments, porosity_r50_pct … porosity_r100_pct and the ring columns.
    """
    mask = np.asarray(mask, dtype=bool)
    phases = np.asarray(phases)
    px = 1.0 if pixel_size_um is None else float(pixel_size_um)
    crack = mask & (phases == Phase.CRACK)
    out: dict[str, float] = {
        "area_um2": area_um2(mask, px),
        "eq_diameter_um": eq_diameter_um(mask, px),
        "porosity_pct": porosity_pct(phases, mask),
        "crack_pct": crack_pct(phases, mask),
        "crack_length_um": crack_length_um(crack, px),
        "n_fragments": float(count_fragments(mask, crack)),
    }
    out.update(radial_profile(phases, mask, fractions).columns())
    return out
