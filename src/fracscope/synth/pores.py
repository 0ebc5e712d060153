"""Pores at grain boundaries and triple junctions, calibrated on the output grid.

The target porosity is a function of the normalised 3-D radius rho (0 at the sphere
centre, 1 at its surface): linear from ``center_pct`` to ``edge_pct``. Pores are stamped
ring by ring — using the same centroid and equal-area radius as
`fracscope.measure.radial_profile` — until each ring holds its target number of pore
pixels, so the measured Eq. 1 porosity and its radial profile match the preset by
construction rather than by a fudge factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from fracscope.measure import PROFILE_FRACTIONS

_RING_EDGES = np.array((0.0, *PROFILE_FRACTIONS))


@dataclass(frozen=True)
class PoreModel:
    """Porosity profile and pore sizes.

    center_pct, edge_pct : target porosity at the sphere centre and surface (linear in rho).
    diameter_um : (min, max) pore diameter, log-uniform.
    core_size_boost : pores are up to this factor larger where the target porosity is
        highest (gradient-porous cores hold the big pores).
    """

    center_pct: float
    edge_pct: float
    diameter_um: tuple[float, float] = (0.06, 0.5)
    core_size_boost: float = 1.5

    def target_fraction(self, rho: np.ndarray) -> np.ndarray:
        """Target pore fraction (0-1) at normalised 3-D radius rho."""
        pct = self.center_pct + (self.edge_pct - self.center_pct) * np.clip(rho, 0.0, 1.0)
        return np.clip(pct, 0.0, 100.0) / 100.0


def _junctions(grains: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Boundary pixels where three or more grains meet (3×3 neighbourhood)."""
    g = np.pad(grains, 1, mode="edge")
    h, w = grains.shape
    stack = np.stack([g[i : i + h, j : j + w] for i in range(3) for j in range(3)])
    stack.sort(axis=0)
    distinct = 1 + np.count_nonzero(np.diff(stack, axis=0), axis=0)
    distinct -= (stack[0] < 0).astype(int)  # -1 (outside) is not a grain
    return boundary & (distinct >= 3)


def stamp_pores(
    mask: np.ndarray,
    grains: np.ndarray,
    boundary: np.ndarray,
    blocked: np.ndarray,
    offset_frac: float,
    model: PoreModel,
    pixel_size_um: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pore pixels for one particle.

    Parameters
    ----------
    mask : filled section.
    grains, boundary : from `ParticleGeometry`.
    blocked : pixels that may not become pore (cracks).
    offset_frac : |cut-plane offset| / sphere radius, for the 3-D radius.
    model : porosity profile and pore sizes.
    pixel_size_um : output pixel size.
    rng : random generator (consumed).
    """
    pore = np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    if rows.size < 10:
        return pore
    cy, cx = rows.mean(), cols.mean()
    radius = math.sqrt(rows.size / math.pi)
    yy, xx = np.indices(mask.shape)
    rho2d = np.hypot(yy - cy, xx - cx) / radius
    rho3d = np.sqrt(rho2d**2 * (1.0 - offset_frac**2) + offset_frac**2)
    ring = np.searchsorted(_RING_EDGES[1:], rho2d, side="left")  # 0..len(fractions)
    n_rings = len(_RING_EDGES)
    ring_m = np.where(mask, ring, n_rings)
    target = np.bincount(ring_m.ravel(), weights=(model.target_fraction(rho3d) * mask).ravel(), minlength=n_rings + 1)[:n_rings]
    counts = np.zeros(n_rings)
    if target.sum() < 0.5:
        return pore

    dist_gb = ndi.distance_transform_edt(~boundary)
    free = mask & ~blocked
    cand_sets = [np.flatnonzero(_junctions(grains, boundary) & free), np.flatnonzero(boundary & free), np.flatnonzero(free)]
    lo, hi = (math.log(d) for d in model.diameter_um)
    t_max = max(model.center_pct, model.edge_pct, 1e-6) / 100.0
    h, w = mask.shape
    for cand in cand_sets:
        if np.all(counts >= target - 0.5):
            break
        rng.shuffle(cand)
        for flat in cand:
            y, x = divmod(int(flat), w)
            k = ring[y, x]
            if counts[k] >= target[k] - 0.5 or pore[y, x]:
                continue
            boost = 1.0 + (model.core_size_boost - 1.0) * model.target_fraction(rho3d[y, x]) / t_max
            s = 0.5 * math.exp(rng.uniform(lo, hi)) * boost / pixel_size_um  # radius in px
            if s < 0.5:
                continue  # sub-pixel pore: less than half of any pixel is void
            r = int(math.ceil(1.6 * s))  # also covers the largest lobe (1.5 s)
            y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, h), max(x - r, 0), min(x + r + 1, w)
            dy, dx = np.ogrid[y0 - y : y1 - y, x0 - x : x1 - x]
            d = np.hypot(dy, dx)
            # Star-shaped void: full near the junction, tapering along the boundaries.
            if rng.random() < 0.2:  # slit: a short opened stretch of grain boundary
                st = (d <= 1.6 * s) & (dist_gb[y0:y1, x0:x1] <= 0.5) if s >= 1.0 else d <= s
            else:  # star: full near the junction, tapering along the boundaries
                # Random low-order lobes: real voids are irregular, not regular stars.
                ang = np.arctan2(dy, dx)
                lobe = 1.0 + 0.3 * np.cos(2 * ang + rng.uniform(0, 6.3)) + 0.2 * np.cos(3 * ang + rng.uniform(0, 6.3))
                taper = np.maximum(0.5, 0.75 * s * (1.0 - d / s))
                st = (d <= s * lobe) & ((dist_gb[y0:y1, x0:x1] <= taper) | (d <= rng.uniform(0.35, 0.7) * s * lobe))
            st &= free[y0:y1, x0:x1] & ~pore[y0:y1, x0:x1]
            if not st.any():
                continue
            pore[y0:y1, x0:x1] |= st
            counts += np.bincount(ring[y0:y1, x0:x1][st], minlength=n_rings)[:n_rings]
            if np.all(counts >= target - 0.5):
                break
    return pore
