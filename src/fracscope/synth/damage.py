"""Intergranular cracks and the damage class they make, enforced on the output grid.

Classes (Li et al. 2024, Fig. 5): *intact* has no crack pixel; *mildly_damaged* has
cracks but the section minus its crack pixels is one 4-connected body; *broken* leaves
at least two 4-connected fragments, each at least `MIN_FRAGMENT_FRACTION` of the
section. Crumbs (smaller bodies) are turned into crack so the class is unambiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import line as draw_line
from skimage.graph import route_through_array

from fracscope.synth.geometry import ParticleGeometry

MIN_FRAGMENT_FRACTION = 0.05
_MAX_CRUMB_FRACTION = 0.01  # retry a crack pattern whose crumbs would add more crack than this


@dataclass(frozen=True)
class CrackStyle:
    """Crack parameters in physical units.

    width_um : (min, max) crack opening; log-uniform per crack.
    branches : (min, max) number of side branches per particle.
    min_width_px : cracks narrower than this on the output grid are widened to it.
    short_fraction : share of mildly damaged sections drawn with one or two short cracks only
        (anywhere in the section, half of them open to the surface) instead of long cracks from
        the core: the early damage a person sees at native resolution.
    short_length_um : (min, max) straight-line length of a short crack; log-uniform.
    short_width_um : (min, max) opening of a short crack; log-uniform (thin: 1-3 px at 0.05 µm/px).
    """

    width_um: tuple[float, float] = (0.03, 0.3)
    branches: tuple[int, int] = (0, 3)
    min_width_px: float = 1.0
    short_fraction: float = 0.0
    short_length_um: tuple[float, float] = (0.8, 4.0)
    short_width_um: tuple[float, float] = (0.03, 0.15)


def canonical_class(mask: np.ndarray, crack: np.ndarray) -> tuple[np.ndarray, str]:
    """Class of a section from its crack pixels; crumbs become crack.

    Returns the (possibly grown) crack mask and the class name.
    """
    crack = crack & mask
    if not crack.any():
        return crack, "intact"
    body = mask & ~crack
    lab, n = ndi.label(body)
    if n == 0:
        return crack, "mildly_damaged"
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    area = int(mask.sum())
    big = np.flatnonzero(sizes >= MIN_FRAGMENT_FRACTION * area)
    if big.size >= 2:
        keep = np.isin(lab, big)
        return crack | (body & ~keep), "broken"
    keep = lab == int(np.argmax(sizes))
    return crack | (body & ~keep), "mildly_damaged"


def _path(cost: np.ndarray, start: tuple[int, int], end: tuple[int, int]) -> np.ndarray:
    idx, _ = route_through_array(cost, start, end, fully_connected=True, geometric=True)
    return np.asarray(idx, dtype=np.int64)


def _point(centre: tuple[float, float], r: float, theta: float, size: int) -> tuple[int, int]:
    y = int(round(centre[0] + r * math.sin(theta)))
    x = int(round(centre[1] + r * math.cos(theta)))
    return (min(max(y, 0), size - 1), min(max(x, 0), size - 1))


def _paint(paths: list[tuple[np.ndarray, float]], shape: tuple[int, int]) -> np.ndarray:
    crack = np.zeros(shape, dtype=bool)
    for path, width_px in paths:
        line = np.zeros(shape, dtype=bool)
        line[path[:, 0], path[:, 1]] = True
        radius = 0.5 * (width_px - 1.0)
        if radius >= 1.0:
            r = int(math.ceil(radius))
            yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
            line = ndi.binary_dilation(line, structure=(yy**2 + xx**2) <= radius**2)
        crack |= line
    return crack


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return math.exp(rng.uniform(math.log(lo_hi[0]), math.log(lo_hi[1])))


def _boundary_cost(geom: ParticleGeometry, rng: np.random.Generator) -> np.ndarray:
    """Path cost inside the section: cracks follow grain boundaries, cheap there, dear through grains.
    The caller sets the cost outside the section."""
    return np.where(geom.boundary, 1.0, 12.0) * rng.uniform(1.0, 1.6, geom.mask.shape)


def _crack_pattern(
    geom: ParticleGeometry,
    broken: bool,
    style: CrackStyle,
    pixel_size_um: float,
    rng: np.random.Generator,
) -> np.ndarray:
    mask = geom.mask
    size = mask.shape[0]
    rows, cols = np.nonzero(mask)
    cy, cx = float(rows.mean()), float(cols.mean())
    rad = math.sqrt(rows.size / math.pi)
    r_out = float(np.hypot(rows - cy, cols - cx).max()) + 2.0
    cost = _boundary_cost(geom, rng)
    cost[~mask] = 1.0 if broken else 1e4  # a through-crack may leave the section; others stay inside

    def width() -> float:
        return max(_log_uniform(rng, style.width_um) / pixel_size_um, style.min_width_px)

    core = _point((cy, cx), rng.uniform(0, 0.15) * rad, rng.uniform(0, 2 * np.pi), size)
    paths: list[tuple[np.ndarray, float]] = []
    if broken:
        t1 = rng.uniform(0, 2 * np.pi)
        t2 = t1 + np.pi + rng.normal(0, 0.45)
        w = width()
        paths.append((_path(cost, _point((cy, cx), r_out, t1, size), core), w))
        paths.append((_path(cost, core, _point((cy, cx), r_out, t2, size)), w * rng.uniform(0.5, 1.0)))
        if rng.random() < 0.3:  # a second through-crack: three fragments
            t3 = t1 + rng.uniform(0.4, 0.6) * np.pi * rng.choice([-1, 1])
            paths.append((_path(cost, core, _point((cy, cx), r_out, t3, size)), width()))
    else:
        for _ in range(int(rng.integers(1, 4))):
            end = _point((cy, cx), rng.uniform(0.4, 0.8) * rad, rng.uniform(0, 2 * np.pi), size)
            paths.append((_path(cost, core, end), width()))
    n_branch = int(rng.integers(style.branches[0], style.branches[1] + 1))
    for _ in range(n_branch):
        trunk = paths[int(rng.integers(len(paths)))][0]
        start = tuple(trunk[int(rng.integers(len(trunk)))])
        ang = math.atan2(start[0] - cy, start[1] - cx) + rng.normal(0, 0.6)
        r_start = math.hypot(start[0] - cy, start[1] - cx)
        r_end = min(r_start + rng.uniform(0.15, 0.35) * rad, 0.85 * rad)
        if r_end <= r_start + 2:
            continue
        end = _point((cy, cx), r_end, ang, size)
        if not mask[end]:
            continue
        paths.append((_path(cost, start, end), max(1.0, 0.6 * width())))
    return _paint(paths, mask.shape) & mask


def _short_crack_pattern(
    geom: ParticleGeometry, style: CrackStyle, pixel_size_um: float, rng: np.random.Generator
) -> np.ndarray:
    """One or two short cracks along grain boundaries, each from a surface or inner start.

    A start on the outline runs inward; an inner start keeps 3 px from the outline. The end is
    `short_length_um` away in a random direction (inward for a surface start) and inside the section.
    """
    mask = geom.mask
    inner = ndi.binary_erosion(mask, iterations=3)
    rim = mask & ~ndi.binary_erosion(mask)
    if not inner.any():
        return np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    cy, cx = float(rows.mean()), float(cols.mean())
    cost = _boundary_cost(geom, rng)
    cost[~mask] = 1e4
    paths: list[tuple[np.ndarray, float]] = []
    for _ in range(int(rng.integers(1, 3))):
        length_px = _log_uniform(rng, style.short_length_um) / pixel_size_um
        from_surface = rng.random() < 0.5
        pool = np.argwhere(rim if from_surface else inner)
        for _attempt in range(20):
            start = tuple(int(v) for v in pool[int(rng.integers(len(pool)))])
            if from_surface:  # inward, within +-60 degrees of the direction to the centre
                ang = math.atan2(cy - start[0], cx - start[1]) + rng.uniform(-1.05, 1.05)
            else:
                ang = rng.uniform(0, 2 * np.pi)
            end = (int(round(start[0] + length_px * math.sin(ang))), int(round(start[1] + length_px * math.cos(ang))))
            if 0 <= end[0] < mask.shape[0] and 0 <= end[1] < mask.shape[1] and inner[end]:
                width_px = max(_log_uniform(rng, style.short_width_um) / pixel_size_um, style.min_width_px)
                paths.append((_path(cost, start, end), width_px))
                break
    return _paint(paths, mask.shape) & mask


def make_cracks(
    geom: ParticleGeometry,
    class_name: str,
    style: CrackStyle,
    pixel_size_um: float,
    rng: np.random.Generator,
    tries: int = 4,
) -> tuple[np.ndarray, str]:
    """Crack pixels realising `class_name` on this geometry.

    Returns (crack mask, class). The class equals the request except when a section is
    too small to hold the pattern (then the nearest achievable class is returned).
    """
    mask = geom.mask
    empty = np.zeros_like(mask)
    if class_name == "intact" or mask.sum() < 20:
        return empty, "intact"
    broken = class_name == "broken"
    area = int(mask.sum())
    # Drawn only when asked for, so configs without short cracks keep their random stream.
    short = not broken and style.short_fraction > 0 and rng.random() < style.short_fraction
    for _ in range(tries):
        if short:
            raw = _short_crack_pattern(geom, style, pixel_size_um, rng)
        else:
            raw = _crack_pattern(geom, broken, style, pixel_size_um, rng)
        crack, got = canonical_class(mask, raw)
        crumbs = int(crack.sum() - raw.sum())
        if got == class_name and crumbs <= _MAX_CRUMB_FRACTION * area:
            return crack, got
    if broken:  # fallback: a straight 8-connected cut through the centroid
        rows, cols = np.nonzero(mask)
        cy, cx = rows.mean(), cols.mean()
        t = rng.uniform(0, np.pi)
        n = mask.shape[0]
        r = 2 * n
        rr, cc = draw_line(int(cy - r * math.sin(t)), int(cx - r * math.cos(t)), int(cy + r * math.sin(t)), int(cx + r * math.cos(t)))
        ok = (rr >= 0) & (rr < n) & (cc >= 0) & (cc < n)
        raw = empty.copy()
        raw[rr[ok], cc[ok]] = True
        crack, got = canonical_class(mask, raw & mask)
        return crack, got
    # mild fallback: a short radial crack from the core
    rows, cols = np.nonzero(mask)
    cy, cx = int(rows.mean()), int(cols.mean())
    raw = empty.copy()
    rr, cc = draw_line(cy, cx, cy + 3, cx + 3)
    raw[rr, cc] = True
    return canonical_class(mask, raw & mask)
