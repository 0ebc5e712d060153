"""Particle geometry: lumpy section outline and a radially aligned grain tessellation.

A secondary particle is a sphere of primary grains. The cut plane at distance
``offset_um`` from the sphere centre shows a disc of radius sqrt(R² - z²). Grains are
cells of a Voronoi tessellation computed in warped coordinates
``F(p) = p · ((|p| + r0) / R) ** (1/aspect - 1)``: seeds that are evenly spaced in F-space
become cells that are ``aspect`` times longer radially than tangentially in the image,
while the core (|p| << r0) stays equiaxed, where real grains are randomly oriented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class ParticleSpec:
    """What to render for one particle, in physical units.

    sphere_diameter_um : diameter of the sphere the section is cut from.
    offset_um : distance of the cut plane from the sphere centre (|offset| < R).
    grain_width_um, grain_aspect : primary grain width and length/width ratio (rim).
    class_name : requested damage class (one of CLASS_NAMES).
    """

    sphere_diameter_um: float
    offset_um: float
    grain_width_um: float
    grain_aspect: float
    class_name: str

    @property
    def section_radius_um(self) -> float:
        """Radius of the circle where the plane cuts the sphere."""
        r = 0.5 * self.sphere_diameter_um
        return math.sqrt(max(r * r - self.offset_um**2, 0.0))

    @property
    def section_aspect(self) -> float:
        """Apparent grain aspect: an off-centre cut sees radial grains obliquely."""
        frac = self.section_radius_um / (0.5 * self.sphere_diameter_um)
        return 1.0 + (self.grain_aspect - 1.0) * frac


@dataclass
class ParticleGeometry:
    """Geometry of one particle on a local canvas (output pixel grid).

    mask : filled section (bool).
    grains : grain index per pixel, -1 outside the mask.
    boundary : grain-boundary pixels inside the mask (bool).
    centre_rc : sphere-axis position on the canvas (row, col), in pixels.
    radius_px : section radius in pixels (before the lumpy outline).
    """

    mask: np.ndarray
    grains: np.ndarray
    boundary: np.ndarray
    centre_rc: tuple[float, float]
    radius_px: float


def canvas_half_px(spec: ParticleSpec, pixel_size_um: float) -> int:
    """Half size of a canvas that holds the particle, its lumps and crack exits."""
    length_um = spec.grain_width_um * spec.grain_aspect
    return int(math.ceil((1.35 * spec.section_radius_um + 0.5 * length_um) / pixel_size_um)) + 5


def _warp(dy: np.ndarray, dx: np.ndarray, r0: float, radius: float, aspect: float) -> np.ndarray:
    r = np.hypot(dy, dx)
    g = ((r + r0) / radius) ** (1.0 / aspect - 1.0)
    return np.stack([dy * g, dx * g], axis=-1)


def radial_seeds(
    radius_px: float, length_px: float, aspect: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seed points (dy, dx) on jittered rings: radial spacing = grain length,
    tangential spacing = length / local aspect (equiaxed core, elongated rim)."""
    r0 = length_px
    b = 1.0 / aspect - 1.0
    n_rings = int(math.ceil((1.25 * radius_px + 2 * length_px) / length_px)) + 1
    r_k = (np.arange(n_rings) + 0.5) * length_px
    a_loc = 1.0 / (1.0 + b * r_k / (r_k + r0))
    n_k = np.maximum(1, np.round(2 * np.pi * r_k * a_loc / length_px)).astype(int)
    ring = np.repeat(np.arange(n_rings), n_k)
    idx = np.concatenate([np.arange(n) for n in n_k])
    n_per = n_k[ring]
    # Strong jitter breaks the ring/spoke order: real grains read as a polygonal mosaic.
    theta = (idx + rng.uniform(-0.45, 0.45, ring.size)) * (2 * np.pi / n_per) + rng.uniform(0, 2 * np.pi, n_rings)[ring]
    r = r_k[ring] + rng.uniform(-0.5, 0.5, ring.size) * length_px
    r = np.abs(r)
    return r * np.sin(theta), r * np.cos(theta)


def _outline_radius(theta: np.ndarray, radius_px: float, coeffs: np.ndarray, phases: np.ndarray) -> np.ndarray:
    m = np.arange(2, 2 + coeffs.size)
    return radius_px * (1.0 + (coeffs[:, None] * np.cos(m[:, None] * theta[None, :] + phases[:, None])).sum(0))


def build_geometry(
    spec: ParticleSpec,
    pixel_size_um: float,
    half_px: int,
    roughness: float,
    rng: np.random.Generator,
) -> ParticleGeometry:
    """Render mask, grain map and grain boundaries on a (2·half+1)² canvas centred on the particle.

    Parameters
    ----------
    spec : the particle to render.
    pixel_size_um : output pixel size.
    half_px : canvas half size (see `canvas_half_px`).
    roughness : relative amplitude of the low-order outline harmonics (e.g. 0.04).
    rng : random generator (consumed).
    """
    size = 2 * half_px + 1
    c = float(half_px)
    radius = max(spec.section_radius_um / pixel_size_um, 2.0)
    aspect = spec.section_aspect
    length = max(spec.grain_width_um * spec.grain_aspect / pixel_size_um, 2.0)
    # Grain length in the plane shrinks with the apparent aspect (oblique cut).
    length = max(length * aspect / spec.grain_aspect, 2.0)

    sy, sx = radial_seeds(radius, length, aspect, rng)
    n_harm = 5
    coeffs = rng.normal(0.0, roughness, n_harm) / np.sqrt(np.arange(1, n_harm + 1))
    coeffs *= min(1.0, 0.15 / max(np.abs(coeffs).sum(), 1e-9))
    # Mid-order lobes (orders 7-24): ~1-4 µm scallops of the real, lumpy outline.
    mid = rng.normal(0.0, 0.3 * roughness, 18)
    mid *= min(1.0, 0.18 / max(np.abs(mid).sum(), 1e-9))  # outline stays within 1.33 R (canvas)
    coeffs = np.concatenate([coeffs, mid])
    ph = rng.uniform(0, 2 * np.pi, coeffs.size)
    seed_r = np.hypot(sy, sx)
    keep_seed = seed_r <= _outline_radius(np.arctan2(sy, sx), radius, coeffs, ph)
    if not keep_seed.any():
        keep_seed[np.argmin(seed_r)] = True

    yy, xx = np.mgrid[0:size, 0:size]
    dy, dx = yy - c, xx - c
    r_pix = np.hypot(dy, dx)
    # Tabulate the outline on a fine angular grid: 23 harmonics per pixel are costly.
    t_tab = np.linspace(-np.pi, np.pi, 4097)
    r_tab = _outline_radius(t_tab, radius, coeffs, ph)
    r_out = np.interp(np.arctan2(dy, dx), t_tab, r_tab)
    width = length / aspect
    inside = r_pix <= r_out + 0.6 * width
    tree = cKDTree(_warp(sy, sx, length, radius, aspect))
    _, nearest = tree.query(_warp(dy[inside], dx[inside], length, radius, aspect))
    grains = np.full((size, size), -1, dtype=np.int32)
    grains[inside] = np.where(keep_seed[nearest], nearest, -1)

    # Rim grains are cut at their own random height: grain-scale lumps, not spikes.
    extra = rng.uniform(-0.3, 0.6, sy.size) * width
    mask = grains >= 0
    mask[inside] &= r_pix[inside] <= r_out[inside] + extra[nearest]
    # Polishing rounds the rim: smoothing the mask turns square notches into scallops.
    mask = ndi.gaussian_filter(mask.astype(np.float32), max(0.22 * width, 0.7)) > 0.5
    mask &= inside
    grains[~mask] = -1
    lab, n = ndi.label(mask)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        mask = lab == int(np.argmax(sizes))
    grains[~mask] = -1
    mask = ndi.binary_fill_holes(mask)
    # Filled holes get the grain of the nearest pixel so every mask pixel has a grain.
    holes = mask & (grains < 0)
    if holes.any():
        idx = ndi.distance_transform_edt(grains < 0, return_distances=False, return_indices=True)
        grains[holes] = grains[idx[0][holes], idx[1][holes]]

    boundary = np.zeros_like(mask)
    both_r = (grains[:, :-1] >= 0) & (grains[:, 1:] >= 0)
    both_d = (grains[:-1, :] >= 0) & (grains[1:, :] >= 0)
    diff_r = (grains[:, :-1] != grains[:, 1:]) & both_r
    diff_d = (grains[:-1, :] != grains[1:, :]) & both_d
    boundary[:, :-1] |= diff_r
    boundary[:-1, :] |= diff_d
    boundary &= mask
    return ParticleGeometry(mask=mask, grains=grains, boundary=boundary, centre_rc=(c, c), radius_px=radius)
