"""Synthetic FIB-SEM stacks of one secondary particle with pores of known voxels.

The ideas of the 2-D generator (`fracscope.synth`) carried into 3-D: a bright particle with
grain-scale grey-level texture in a darker embedding; dark pores, more and larger in the core
(gradient porosity), the two largest at the centre as in the seed paper's Fig. 3; blur,
noise, 8- or 16-bit output; and, for FIB-SEM, drift between slices.

Ground truth is exact on the voxel grid: a voxel belongs to an ellipsoid when its centre lies
inside it, pores are kept apart by at least one voxel in every direction (so no
connectivity can merge them) and, unless placed as open, inside the particle with a solid
rim of two voxels. Stacks are rendered slice by slice, so a 1000 × 1000 × 500 stack streams
to disk without being held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from fracscope.synth.imaging import smooth_noise


ZYX = tuple[float, float, float]


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid: centre and semi-axes (z, y, x) in µm."""

    center_um: ZYX
    radii_um: ZYX

    def index_box(self, voxel_um: ZYX, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive voxel index range (lo, hi) per axis that can hold voxel centres inside it."""
        c, r, v = np.asarray(self.center_um), np.asarray(self.radii_um), np.asarray(voxel_um)
        lo = np.maximum(np.ceil((c - r) / v - 1e-9), 0).astype(int)
        hi = np.minimum(np.floor((c + r) / v + 1e-9), np.asarray(shape) - 1).astype(int)
        return lo, hi

    def slice_mask(self, z_um: float, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
        """Voxel centres of one slice inside the ellipsoid, on the grid ``y_um × x_um``."""
        cz, cy, cx = self.center_um
        rz, ry, rx = self.radii_um
        rest = 1.0 - ((z_um - cz) / rz) ** 2
        if rest < 0:
            return np.zeros((y_um.size, x_um.size), bool)
        return (((y_um - cy) / ry) ** 2)[:, None] + (((x_um - cx) / rx) ** 2)[None, :] <= rest

    @property
    def volume_um3(self) -> float:
        """Analytic volume (the voxel count times the voxel volume is the exact one)."""
        return 4.0 / 3.0 * math.pi * float(np.prod(self.radii_um))


@dataclass(frozen=True)
class Phantom:
    """One particle with pores on a voxel grid.

    shape : (Z, Y, X); voxel_size_um : (z, y, x).
    particle : the particle's ellipsoid (filled body).
    pores : pore ellipsoids; a pore's voxels are those inside it *and* inside the particle.
    """

    shape: tuple[int, int, int]
    voxel_size_um: ZYX
    particle: Ellipsoid
    pores: tuple[Ellipsoid, ...] = ()
    _boxes: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Index boxes of the pores, so a slice only visits the pores it cuts.
        object.__setattr__(self, "_boxes", tuple(p.index_box(self.voxel_size_um, self.shape) for p in self.pores))

    def truth_slice(self, z: int, origin_px: tuple[int, int] = (0, 0),
                    size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(particle bool, pore index int32: i + 1 for `pores[i]`, 0 elsewhere) of slice z.

        By default on the phantom's own (Y, X) grid; `origin_px` and `size` select another
        window of the same pixel lattice (it may extend past the grid, e.g. for drift).
        """
        vz, vy, vx = self.voxel_size_um
        oy, ox = origin_px
        h, w = size if size is not None else self.shape[1:]
        y_um = (oy + np.arange(h)) * vy
        x_um = (ox + np.arange(w)) * vx
        body = self.particle.slice_mask(z * vz, y_um, x_um)
        ids = np.zeros((h, w), np.int32)
        for i, (pore, (lo, hi)) in enumerate(zip(self.pores, self._boxes)):
            if not lo[0] <= z <= hi[0]:
                continue
            y0, y1 = max(lo[1] - oy, 0), min(hi[1] - oy + 1, h)
            x0, x1 = max(lo[2] - ox, 0), min(hi[2] - ox + 1, w)
            if y0 >= y1 or x0 >= x1:
                continue
            inside = pore.slice_mask(z * vz, y_um[y0:y1], x_um[x0:x1]) & body[y0:y1, x0:x1]
            ids[y0:y1, x0:x1][inside] = i + 1
        return body, ids

    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        """Whole-volume (particle, pore index) arrays: for small test volumes."""
        body = np.zeros(self.shape, bool)
        ids = np.zeros(self.shape, np.int32)
        for z in range(self.shape[0]):
            body[z], ids[z] = self.truth_slice(z)
        return body, ids

    def pore_voxel_counts(self) -> np.ndarray:
        """Voxels of each pore (index i for `pores[i]`), computed slice by slice."""
        counts = np.zeros(len(self.pores) + 1, np.int64)
        for z in range(self.shape[0]):
            counts += np.bincount(self.truth_slice(z)[1].ravel(), minlength=len(self.pores) + 1)
        return counts[1:]


@dataclass(frozen=True)
class Imaging:
    """How a slice looks (grey levels are fractions of full scale).

    texture_sd, texture_um : grain-scale grey variation of the solid and its length scale.
    outside_texture_sd : grey variation of the embedding (resin or deposit) around the particle.
    blur_px : in-plane Gaussian blur (beam spot); 0 keeps edges exact.
    noise_sd : Gaussian noise.
    drift_px_sd : per-slice random-walk step of the slice drift (pixels); 0 = no drift.
    drift_whole_px : round drift steps to whole pixels; otherwise fractional drifts are
        applied as Fourier shifts (pure translations).
    """

    bit_depth: int = 8
    pore_polarity: str = "dark"
    solid_level: float = 0.70
    pore_level: float = 0.10
    pore_filled_level: float = 0.95
    outside_level: float = 0.18
    texture_sd: float = 0.04
    texture_um: float = 0.3
    outside_texture_sd: float = 0.0
    blur_px: float = 0.0
    noise_sd: float = 0.0
    drift_px_sd: float = 0.0
    drift_whole_px: bool = True


class StackRenderer:
    """Render the slices of a `Phantom`, one at a time, in any order.

    Drift moves the field of view over the sample, as in a FIB-SEM: each slice is rendered
    on a canvas wider than the stack by the largest drift and cut out at its drifted
    position, so the edges show real content, not padding.

    Parameters
    ----------
    phantom : Phantom
    imaging : Imaging
    seed : int
        Texture, noise and drift are fixed by the seed (slice z uses its own stream).
    """

    def __init__(self, phantom: Phantom, imaging: Imaging = Imaging(), seed: int = 0) -> None:
        self.phantom = phantom
        self.imaging = imaging
        self.seed = int(seed)
        n = phantom.shape[0]
        rng = np.random.default_rng([self.seed, 1])
        steps = rng.normal(0.0, imaging.drift_px_sd, (n, 2)) if imaging.drift_px_sd > 0 else np.zeros((n, 2))
        if imaging.drift_whole_px:
            steps = np.round(steps)
        steps[0] = 0.0
        #: (dy, dx) by which slice z's content is displaced relative to slice 0.
        self.drift_px = np.cumsum(steps, axis=0)
        self.margin = int(np.ceil(np.abs(self.drift_px).max())) + 1 if np.any(self.drift_px) else 0
        self._canvas = (phantom.shape[1] + 2 * self.margin, phantom.shape[2] + 2 * self.margin)
        vz, vy, vx = phantom.voxel_size_um
        self._knot_every = max(1, int(round(imaging.texture_um / vz)))
        self._sigma_px = imaging.texture_um / (0.5 * (vy + vx)) / 2.0
        self._knots: dict[int, np.ndarray] = {}

    def _knot(self, k: int) -> np.ndarray:
        if k not in self._knots:
            if len(self._knots) > 4:
                self._knots.pop(min(self._knots))
            rng = np.random.default_rng([self.seed, 2, k])
            self._knots[k] = smooth_noise(self._canvas, self._sigma_px, rng, pad=3, min_sigma_px=0.5)
        return self._knots[k]

    def texture(self, z: int) -> np.ndarray:
        """Grain-scale texture on the canvas, smooth in z (interpolated between knots `texture_um` apart)."""
        k, t = divmod(z, self._knot_every)
        w = t / self._knot_every
        return (1.0 - w) * self._knot(k) + w * self._knot(k + 1)

    def slice(self, z: int) -> np.ndarray:
        """Slice z as uint8 or uint16."""
        return self.slice_with_truth(z)[0]

    def slice_with_truth(self, z: int, drifted: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slice z and its ground truth (particle mask, pore index), the truth without drift.

        With ``drifted=False`` the slice is cut out where slice 0 was: the same pixels as a
        perfectly aligned stack.
        """
        p = self.imaging
        m = self.margin
        body, ids = self.phantom.truth_slice(z, (-m, -m), self._canvas)
        pore = ids > 0
        level = p.pore_filled_level if p.pore_polarity == "bright" else p.pore_level
        # Bright (filled) pores: the embedding fills the outside as it fills the pores.
        outside = p.pore_filled_level if p.pore_polarity == "bright" else p.outside_level
        tex = self.texture(z)
        img = (outside + p.outside_texture_sd * tex[::-1]).astype(np.float32)
        img[body] = (p.solid_level + p.texture_sd * tex)[body]
        img[pore] = level
        if p.blur_px > 0:
            img = ndi.gaussian_filter(img, p.blur_px)
        if p.noise_sd > 0:
            rng = np.random.default_rng([self.seed, 3, z])
            img = img + p.noise_sd * rng.standard_normal(img.shape, dtype=np.float32)
        top = 65535 if int(p.bit_depth) == 16 else 255
        img = np.round(np.clip(img, 0.0, 1.0) * top)
        h, w = self.phantom.shape[1:]
        core = (slice(m, m + h), slice(m, m + w))
        truth = (body[core], ids[core])
        dtype = np.uint16 if top == 65535 else np.uint8
        d = self.drift_px[z]
        if not drifted or not np.any(d):
            return img[core].astype(dtype), *truth
        if np.all(d == np.round(d)):
            # Content displaced by +d: the window starts d pixels before the undrifted one.
            dy, dx = int(d[0]), int(d[1])
            return img[m - dy : m - dy + h, m - dx : m - dx + w].astype(dtype), *truth
        # A fractional drift as a pure translation (Fourier shift); the margin absorbs the wrap.
        moved = np.fft.ifft2(ndi.fourier_shift(np.fft.fft2(img), d)).real
        return np.round(np.clip(moved[core], 0, top)).astype(dtype), *truth

    def __iter__(self) -> Iterator[np.ndarray]:
        for z in range(self.phantom.shape[0]):
            yield self.slice(z)

    def volume(self, drifted: bool = True) -> np.ndarray:
        """All slices as one array (small volumes only)."""
        return np.stack([self.slice_with_truth(z, drifted)[0] for z in range(self.phantom.shape[0])])


@dataclass(frozen=True)
class PorePopulation:
    """Pores of a gradient-porous particle, after the seed paper's Fig. 3.

    porosity_pct : target volume share of the regular pores (the central ones come on top).
    class_edges_um3, class_fractions : pore volumes are drawn log-uniformly within classes
        with these count shares (paper: 80 % in 0.002-0.010, 16 % in 0.010-0.030, 4 % above).
    noise_fraction, noise_um3 : extra sub-threshold specks, as a share of the regular pores.
    central_um3 : the largest pores, placed at the centre (paper: 3.779 and 1.123 µm³).
    rho_max : the largest normalised radius a pore of each class may sit at; smaller for
        larger pores, so the big ones sit in the interior.
    aspect : (min, max) ratio of the longest to the shortest semi-axis.
    """

    porosity_pct: float = 6.0
    class_edges_um3: tuple[float, ...] = (0.002, 0.010, 0.030, 0.25)
    class_fractions: tuple[float, ...] = (0.80, 0.16, 0.04)
    noise_fraction: float = 0.3
    noise_um3: tuple[float, float] = (0.0004, 0.0018)
    central_um3: tuple[float, ...] = (3.779, 1.123)
    rho_max: tuple[float, ...] = (0.95, 0.85, 0.7)
    aspect: tuple[float, float] = (1.0, 1.6)


def _radii_for(volume_um3: float, rng: np.random.Generator, aspect: tuple[float, float]) -> np.ndarray:
    a = rng.uniform(*aspect)
    shape = np.array([1.0, a ** rng.uniform(-0.5, 0.5), a]) if aspect[1] > 1 else np.ones(3)
    rng.shuffle(shape)
    scale = np.cbrt(3.0 * volume_um3 / (4.0 * math.pi) / float(np.prod(shape)))
    return shape * scale


class _Placer:
    """Rejection placement: pores inside the particle with a rim, one voxel apart from each other."""

    def __init__(self, particle: Ellipsoid, voxel_um: ZYX, shape: tuple[int, int, int], rim_vox: int = 2) -> None:
        self.particle = particle
        self.voxel = np.asarray(voxel_um)
        self.shape = shape
        self.rim_um = rim_vox * float(self.voxel.max())
        self.lo = np.zeros((0, 3), int)
        self.hi = np.zeros((0, 3), int)
        self.pores: list[Ellipsoid] = []

    def try_add(self, center: np.ndarray, radii: np.ndarray) -> bool:
        pc, pr = np.asarray(self.particle.center_um), np.asarray(self.particle.radii_um)
        # Inside with a rim: |c/a| + (r + rim) / min(a) <= 1 (the map x -> x/a shrinks by at most 1/min(a)).
        if np.sqrt((((center - pc) / pr) ** 2).sum()) + (radii.max() + self.rim_um) / pr.min() > 1.0:
            return False
        pore = Ellipsoid(tuple(float(v) for v in center), tuple(float(v) for v in radii))
        lo, hi = pore.index_box(tuple(self.voxel), self.shape)
        if np.any(hi < lo):
            return False
        # One empty voxel between index boxes in some axis: no connectivity can join them.
        if len(self.lo):
            apart = (self.hi + 1 < lo) | (hi + 1 < self.lo)
            if not apart.any(axis=1).all():
                return False
        self.lo = np.vstack([self.lo, lo])
        self.hi = np.vstack([self.hi, hi])
        self.pores.append(pore)
        return True


def random_phantom(
    shape: tuple[int, int, int],
    voxel_size_um: ZYX,
    seed: int = 0,
    population: PorePopulation = PorePopulation(),
    particle_fill: float = 0.92,
    max_tries: int = 60,
) -> Phantom:
    """A gradient-porous particle centred in the volume.

    Parameters
    ----------
    shape, voxel_size_um : the voxel grid.
    seed : random seed.
    population : PorePopulation
    particle_fill : particle semi-axes as a fraction of the half-extent of the volume.
    max_tries : placement attempts per pore before it is skipped.
    """
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * np.asarray(voxel_size_um)
    center = (extent - np.asarray(voxel_size_um)) / 2.0
    radii = 0.5 * extent * particle_fill * rng.uniform(0.94, 1.0, 3)
    particle = Ellipsoid(tuple(float(v) for v in center), tuple(float(v) for v in radii))
    placer = _Placer(particle, voxel_size_um, shape)

    # The largest pores at the centre, side by side along x, as in the paper.
    gap_um = 3.0 * float(np.max(voxel_size_um))
    first_r = 0.0
    for k, v in enumerate(population.central_um3):
        r = _radii_for(v, rng, (1.0, 1.25))
        side = 0.0 if k == 0 else (1.0 if k % 2 else -1.0)
        placer.try_add(center + np.array([0.0, 0.0, side * (first_r + r.max() + gap_um)]), r)
        first_r = first_r or float(r.max())

    edges = np.asarray(population.class_edges_um3)
    fr = np.asarray(population.class_fractions, dtype=float)
    mean_v = float(sum(f * (b - a) / math.log(b / a) for f, a, b in zip(fr / fr.sum(), edges[:-1], edges[1:])))
    n_regular = int(round(population.porosity_pct / 100.0 * particle.volume_um3 / mean_v))
    classes = rng.choice(len(fr), size=n_regular, p=fr / fr.sum())
    vols = np.exp(rng.uniform(np.log(edges[classes]), np.log(edges[classes + 1])))
    n_noise = int(round(population.noise_fraction * n_regular))
    lo, hi = population.noise_um3
    noise = np.exp(rng.uniform(math.log(lo), math.log(hi), n_noise))
    all_v = np.concatenate([vols, noise])
    all_c = np.concatenate([classes, np.zeros(n_noise, int)])
    order = np.argsort(-all_v)  # big pores first: they are the hardest to fit
    pr = np.asarray(radii)
    for i in order:
        r = _radii_for(float(all_v[i]), rng, population.aspect)
        rho_max = population.rho_max[min(int(all_c[i]), len(population.rho_max) - 1)]
        for _ in range(max_tries):
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            # Uniform in volume within rho_max, then scaled onto the ellipsoid.
            rho = rho_max * rng.random() ** (1.0 / 3.0)
            if placer.try_add(center + d * rho * pr, r):
                break
    return Phantom(tuple(int(s) for s in shape), tuple(float(v) for v in voxel_size_um), particle,
                   tuple(placer.pores))


def phantom_with_pores(
    shape: tuple[int, int, int],
    voxel_size_um: ZYX,
    particle_radii_um: ZYX,
    pores: Sequence[tuple[ZYX, ZYX]],
) -> Phantom:
    """A particle centred in the volume with pores at given offsets from its centre.

    Parameters
    ----------
    pores : sequence of ((dz, dy, dx) offset from the particle centre, (rz, ry, rx) semi-axes), µm.
    """
    extent = np.asarray(shape) * np.asarray(voxel_size_um)
    center = (extent - np.asarray(voxel_size_um)) / 2.0
    particle = Ellipsoid(tuple(float(v) for v in center), tuple(float(v) for v in particle_radii_um))
    ells = tuple(
        Ellipsoid(tuple(float(c + o) for c, o in zip(center, off)), tuple(float(r) for r in rad)) for off, rad in pores
    )
    return Phantom(tuple(int(s) for s in shape), tuple(float(v) for v in voxel_size_um), particle, ells)
