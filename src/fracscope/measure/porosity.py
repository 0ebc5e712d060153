"""Porosity (Eq. 1) and its radial profile (Fig. 2f-h of Li et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fracscope.types import Phase

PROFILE_FRACTIONS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"particle mask must be 2-D, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _phase_fraction_pct(phases: np.ndarray, mask: np.ndarray, code: int) -> float:
    mask = _as_mask(mask)
    phases = np.asarray(phases)
    if phases.shape != mask.shape:
        raise ValueError(f"phases {phases.shape} and mask {mask.shape} differ in shape")
    n = int(mask.sum())
    if n == 0:
        return float("nan")
    return 100.0 * int(np.count_nonzero(phases[mask] == code)) / n


def porosity_pct(phases: np.ndarray, mask: np.ndarray) -> float:
    """Porosity of one particle section, Eq. 1, in percent.

    Parameters
    ----------
    phases : ndarray of uint8, shape (H, W)
        Phase codes (`fracscope.types.Phase`): 2 marks pore pixels.
    mask : ndarray of bool, shape (H, W)
        The filled particle section (solid, pores and cracks together).

    Returns
    -------
    float
        Pore pixels inside the mask divided by mask pixels, × 100. Crack pixels are
        not pores. NaN for an empty mask.
    """
    return _phase_fraction_pct(phases, mask, Phase.PORE)


def crack_pct(phases: np.ndarray, mask: np.ndarray) -> float:
    """Crack pixels inside the particle mask over mask pixels, × 100 (NaN for an empty mask)."""
    return _phase_fraction_pct(phases, mask, Phase.CRACK)


@dataclass(frozen=True)
class RadialProfile:
    """Porosity against distance from the section's centroid.

    fractions : radii as fractions f of R = sqrt(area / pi).
    circle_pct : porosity inside the circle of radius f·R (intersected with the mask).
    annulus_pct : porosity in the ring between consecutive fractions; the first entry is
        the inner disc 0 .. fractions[0].
    centroid_rc : (row, col) of the centre in pixels.
    radius_px : R in pixels.
    """

    fractions: tuple[float, ...]
    circle_pct: tuple[float, ...]
    annulus_pct: tuple[float, ...]
    centroid_rc: tuple[float, float]
    radius_px: float

    def columns(self) -> dict[str, float]:
        """Flat table columns: porosity_r50_pct … porosity_r100_pct, porosity_ring0_50_pct, …"""
        out: dict[str, float] = {}
        for f, v in zip(self.fractions, self.circle_pct):
            out[f"porosity_r{round(f * 100)}_pct"] = v
        edges = (0.0, *self.fractions)
        for a, b, v in zip(edges[:-1], edges[1:], self.annulus_pct):
            out[f"porosity_ring{round(a * 100)}_{round(b * 100)}_pct"] = v
        return out


def radial_profile(
    phases: np.ndarray,
    mask: np.ndarray,
    fractions: tuple[float, ...] = PROFILE_FRACTIONS,
) -> RadialProfile:
    """Porosity inside concentric circles of f·R around the mask centroid (Fig. 2h).

    The centre is the centroid of the mask and R = sqrt(area / pi), the radius of the
    circle with the section's area. Each circle is intersected with the mask, so pixels
    outside the particle never count. A pixel belongs to a circle when its centre lies
    at distance <= f·R.

    Parameters
    ----------
    phases : ndarray of uint8, shape (H, W)
        Phase codes; 2 marks pores.
    mask : ndarray of bool, shape (H, W)
        The filled particle section.
    fractions : tuple of float
        Increasing radii as fractions of R.

    Returns
    -------
    RadialProfile
        NaN where a circle or ring holds no mask pixel.
    """
    mask = _as_mask(mask)
    phases = np.asarray(phases)
    if phases.shape != mask.shape:
        raise ValueError(f"phases {phases.shape} and mask {mask.shape} differ in shape")
    fr = tuple(float(f) for f in fractions)
    if any(b <= a for a, b in zip(fr[:-1], fr[1:])) or fr[0] <= 0:
        raise ValueError(f"fractions must be positive and increasing, got {fractions}")
    rows, cols = np.nonzero(mask)
    nan = float("nan")
    if rows.size == 0:
        n = len(fr)
        return RadialProfile(fr, (nan,) * n, (nan,) * n, (nan, nan), 0.0)
    r0, c0 = float(rows.mean()), float(cols.mean())
    radius = float(np.sqrt(rows.size / np.pi))
    dist = np.hypot(rows - r0, cols - c0)
    is_pore = phases[rows, cols] == Phase.PORE

    # Circle k holds the pixels with dist <= its radius: those whose first circle (the number of radii
    # below their distance) is <= k. One pass instead of one comparison per circle.
    first = np.searchsorted(np.array([f * radius for f in fr]), dist, side="left")
    n_in = np.cumsum(np.bincount(first, minlength=len(fr) + 1))
    p_in = np.cumsum(np.bincount(first[is_pore], minlength=len(fr) + 1))
    circle, ring = [], []
    prev_n = prev_p = 0
    for k in range(len(fr)):
        n, p = int(n_in[k]), int(p_in[k])
        circle.append(100.0 * p / n if n else nan)
        ring.append(100.0 * (p - prev_p) / (n - prev_n) if n > prev_n else nan)
        prev_n, prev_p = n, p
    return RadialProfile(fr, tuple(circle), tuple(ring), (r0, c0), radius)
