"""Size measurements of one particle section, and every per-particle column together (`measure_particle`)."""

from __future__ import annotations

import math

import numpy as np

from fracscope.measure.cracks import crack_measurements
from fracscope.measure.porosity import PROFILE_FRACTIONS, crack_pct, porosity_pct, radial_profile
from fracscope.types import Phase


def area_um2(mask: np.ndarray, pixel_size_um: float) -> float:
    """Section area in µm² (pixel count × pixel_size_um²)."""
    return float(np.count_nonzero(mask)) * pixel_size_um**2


def eq_diameter_um(mask: np.ndarray, pixel_size_um: float) -> float:
    """Diameter in µm of the circle with the section's area."""
    return 2.0 * math.sqrt(area_um2(mask, pixel_size_um) / math.pi)


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
        area_um2, eq_diameter_um, porosity_pct, crack_pct, then the crack columns of
        `fracscope.measure.cracks.crack_measurements` (crack_length_um, n_fragments,
        crack_reach_frac, crack_reaches_surface, crack_splits_section,
        crack_splits_bridged, longest_crack_frac, n_cracks), then porosity_r50_pct … porosity_r100_pct and the
        ring columns.
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
        **crack_measurements(mask, crack, px),
    }
    out.update(radial_profile(phases, mask, fractions).columns())
    return out
