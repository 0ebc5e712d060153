"""Uneven illumination: the particles' grey level drifting across an image, and evening it out.

An SEM detector's yield varies over a low-magnification field (one side, or the corners, darker), and a
CT slice's grey level falls towards its edge. The networks normalise each image by global percentiles, so
under a drift of ±10-30 % the particles on the dark side read as matrix (the real images of `data/real/`
under `bench/real_images.py --drift`: the Pt-infiltrated one's class agreement 0.86 → 0.63 at a ±20 % gain and
two thirds of its sections lost under a ramp of ±15 % of its grey range; the CT slice lost up to 13 % of its
sections under a vignette). docs/BENCHMARKS.md "Uneven illumination".

The particles of one electrode are one material, so their interior grey level is one number everywhere,
up to scatter between particles. `particle_grey_trend` fits it as a smooth surface of position over the
sections a first detection found (a plane, or a quadratic with enough sections; Tukey-weighted, so dim
out-of-plane sections and misdetections do not pull it) and measures how far it drifts across the image;
`evened` divides the image's signal above its black level by that surface. `fracscope.locate` detects again
on the evened image when the drift exceeds `SHADING_LIMIT` (``even_illumination=true``, the default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fracscope.crop import strided_sample

# A section's interior (the mask eroded by CORE_EROSION_PX, away from edge contrast) needs at least
# MIN_CORE_PX pixels to give its grey level; at least MIN_SECTIONS such sections for a plane,
# MIN_SECTIONS_QUADRATIC for a quadratic surface (vignetting, a CT slice's fall-off).
CORE_EROSION_PX = 2
MIN_CORE_PX = 50
# The surface is smooth, so a regular subsample of at most CORE_SAMPLE_PX pixels (every k-th row and column;
# erosion and the minimum core scaled with k) gives it: 100 → 25 ms on a 2,048 x 1,536 field.
CORE_SAMPLE_PX = 1 << 19
MIN_SECTIONS = 6
MIN_SECTIONS_QUADRATIC = 24
TUKEY_C = 4.685
FIT_ITERATIONS = 20
# The drift is measured on a 7 x 7 grid over the central 90 % of the image (not the corners, where a
# quadratic extrapolates): (max - min) / median of the fitted signal above the black level.
GRID_EXTENT = 0.9
# Drift of images without uneven illumination, measured: generated fields (tuning seeds 555-556, dark and
# infiltrated looks, 112 fields) 0.02-0.11, the real images of data/real 0.01-0.08. A linear drift of ±10 %
# across the width reads 0.20-0.28 on them.
SHADING_LIMIT = 0.15
BLACK_PERCENTILE = 0.5
BLACK_SAMPLE_PX = 1 << 18  # the percentile of a regular subsample (`fracscope.crop.strided_sample`): bounded cost
# The surface is floored at this share of its median before dividing, so a fit that dips towards zero in a
# far corner cannot blow up the grey levels there.
MIN_GAIN = 0.2


@dataclass(frozen=True)
class GreyTrend:
    """The particles' interior grey level as a surface over the image.

    coef : surface coefficients over coordinates scaled to [-1, 1] (x = columns, y = rows): 1, x, y
        (plane), then x², xy, y² (quadratic).
    black : the image's black level (grey level of its darkest `BLACK_PERCENTILE` %).
    level : median of the fitted surface above `black` over the measuring grid.
    shading : (max - min) / `level` over that grid: 0 for an evenly lit image.
    n_sections : sections that gave a grey level; n_used : those the robust fit kept.
    """

    coef: tuple[float, ...]
    black: float
    level: float
    shading: float
    n_sections: int
    n_used: int

    @property
    def quadratic(self) -> bool:
        return len(self.coef) == 6


def _terms(y: np.ndarray, x: np.ndarray, quadratic: bool) -> list[np.ndarray]:
    terms = [np.ones_like(x), x, y]
    return terms + [x * x, x * y, y * y] if quadratic else terms


def section_cores(values: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per section with at least `MIN_CORE_PX` core pixels (its mask eroded by `CORE_EROSION_PX`, a diamond):
    the core's centroid row and column scaled to [-1, 1], and its median grey level (to 1/1024 of the
    image's grey range: one histogram per section, not a sort of every pixel). Images over `CORE_SAMPLE_PX`
    are read on every k-th row and column."""
    import cv2

    h, w = values.shape
    k = max(1, math.ceil(math.sqrt(h * w / CORE_SAMPLE_PX)))
    labels = np.asarray(instances)[::k, ::k]
    values = values[::k, ::k]
    as_float = labels.astype(np.float32)  # exact up to 2**24 labels; OpenCV erodes float32, not int32
    r = max(1, round(CORE_EROSION_PX / k))
    diamond = (np.abs(np.mgrid[-r:r + 1, -r:r + 1]).sum(0) <= r).astype(np.uint8)
    low = cv2.erode(as_float, diamond, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    high = cv2.dilate(as_float, diamond, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    rows, cols = np.nonzero((labels > 0) & (low == as_float) & (high == as_float))
    own = labels[rows, cols].astype(np.int64)
    grey = values[rows, cols].astype(np.float64)
    n_labels = int(labels.max()) + 1
    count = np.bincount(own, minlength=n_labels)
    keep = np.flatnonzero(count >= MIN_CORE_PX / (k * k))
    if keep.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    y = (k * np.bincount(own, weights=rows, minlength=n_labels)[keep] / count[keep] + 0.5) / h * 2 - 1
    x = (k * np.bincount(own, weights=cols, minlength=n_labels)[keep] / count[keep] + 0.5) / w * 2 - 1
    lo, hi = float(grey.min()), float(grey.max())
    bins = 1024
    step = (hi - lo) / (bins - 1) if hi > lo else 1.0
    q = np.rint((grey - lo) / step).astype(np.int64)
    hist = np.bincount(own * bins + q, minlength=n_labels * bins).reshape(n_labels, bins)[keep]
    cum = hist.cumsum(axis=1)
    median_bin = (cum >= (cum[:, -1:] + 1) / 2).argmax(axis=1)
    return y, x, lo + median_bin * step


def particle_grey_trend(pixels: np.ndarray, instances: np.ndarray) -> GreyTrend | None:
    """The grey-level surface of the sections in `instances` (label map over `pixels`); None with fewer
    than `MIN_SECTIONS` sections large enough to measure."""
    values = np.asarray(pixels)
    if values.ndim != 2:
        raise ValueError(f"particle_grey_trend needs one grey channel, got shape {values.shape}")
    y, x, v = section_cores(values, instances)
    n = len(v)
    if n < MIN_SECTIONS:
        return None
    design = np.stack(_terms(y, x, n >= MIN_SECTIONS_QUADRATIC), axis=-1)
    weights = np.ones(n)
    coef = np.zeros(design.shape[1])
    for _ in range(FIT_ITERATIONS):
        root = np.sqrt(weights)
        coef = np.linalg.lstsq(design * root[:, None], v * root, rcond=None)[0]
        residual = v - design @ coef
        scale = 1.4826 * float(np.median(np.abs(residual))) + 1e-6 * (float(np.abs(v).max()) + 1.0)
        u = residual / (TUKEY_C * scale)
        weights = np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)
        if weights.sum() < design.shape[1] + 1:  # too few inliers: keep the last fit
            break
    black = float(np.percentile(strided_sample(values, BLACK_SAMPLE_PX), BLACK_PERCENTILE))
    grid = np.linspace(-GRID_EXTENT, GRID_EXTENT, 7)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    fitted = np.stack(_terms(gy.ravel(), gx.ravel(), design.shape[1] == 6), axis=-1) @ coef - black
    level = float(np.median(fitted))
    shading = float((fitted.max() - fitted.min()) / level) if level > 0 else float("inf")
    return GreyTrend(tuple(float(c) for c in coef), black, level, shading, n, int((weights > 0).sum()))


def evened(pixels: np.ndarray, trend: GreyTrend) -> np.ndarray:
    """`pixels` with their signal above the black level divided by the trend's surface (normalised to its
    median), in the input's dtype (integers rounded and clipped to their range)."""
    values = np.asarray(pixels)
    h, w = values.shape
    y = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1)[:, None]
    x = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1)[None, :]
    surface = sum(np.float32(c) * t for c, t in zip(trend.coef, _terms(y, x, trend.quadratic)))
    gain = np.maximum((surface - np.float32(trend.black)) / np.float32(trend.level), np.float32(MIN_GAIN))
    out = np.float32(trend.black) + (values.astype(np.float32) - np.float32(trend.black)) / gain
    if np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(values.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(values.dtype)
    return out.astype(values.dtype if np.issubdtype(values.dtype, np.floating) else np.float32)
