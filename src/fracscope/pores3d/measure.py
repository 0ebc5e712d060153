"""Per-pore and per-particle measurements in physical units, accumulated chunk by chunk.

Conventions (as `fracscope.measure`, extended to 3-D):

- Voxel ``(k, i, j)`` has its centre at ``(k·z, i·y, j·x)`` µm.
- The particle is the filled body (solid + voids inside it). Its centre is the centroid of
  its voxels; its radius R is the radius of the sphere with its volume.
- A pore's volume is its voxel count × z·y·x; its equivalent diameter is that of the sphere
  with its volume; ``r_rel`` is the distance of its centroid from the particle centre over R.
- Porosity is Eq. 1 in 3-D: pore voxels / particle voxels × 100.
- A pore ``touches_outside`` when one of its voxels neighbours (under the labelling
  connectivity) a voxel outside the particle: it is open to the particle's surroundings.
  It ``touches_border`` when it reaches the edge of the stack, so its volume is a lower bound.
- Radial shells: a voxel lies inside the sphere of f·R when its centre is at distance <= f·R
  (the 2-D rule of `fracscope.measure.radial_profile`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from fracscope.pores3d.stack import VoxelSize


def eq_diameter_um(volume_um3: np.ndarray | float) -> np.ndarray | float:
    """Diameter in µm of the sphere with this volume (µm³)."""
    return np.cbrt(6.0 * np.asarray(volume_um3, dtype=np.float64) / math.pi)


def size_bin_labels(bins_um3: tuple[float, ...]) -> list[str]:
    """Names of the volume classes: '0.002-0.010', '0.010-0.030', '>=0.030' (µm³)."""
    edges = [float(b) for b in bins_um3]
    labels = [f"{a:.3f}-{b:.3f}" for a, b in zip(edges[:-1], edges[1:])]
    return [*labels, f">={edges[-1]:.3f}"]


def size_bin_index(volume_um3: np.ndarray, bins_um3: tuple[float, ...]) -> np.ndarray:
    """Class of each volume: i for bins[i] <= v < bins[i+1], the last class open above; -1 below bins[0]."""
    edges = np.asarray(bins_um3, dtype=np.float64)
    return np.searchsorted(edges, np.asarray(volume_um3, dtype=np.float64), side="right") - 1


def size_distribution(volume_um3: np.ndarray, bins_um3: tuple[float, ...]) -> dict:
    """Pore counts and volumes per class, with their shares in percent.

    Returns
    -------
    dict
        bins_um3, labels, count, count_pct, volume_um3, volume_pct (pores below bins[0] are
        in no class and not in the totals).
    """
    v = np.asarray(volume_um3, dtype=np.float64)
    edges = tuple(float(b) for b in bins_um3)
    if any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"bins must increase, got {bins_um3}")
    idx = size_bin_index(v, edges)
    n_cls = len(edges)
    inside = idx >= 0
    count = np.bincount(idx[inside], minlength=n_cls)
    vol = np.bincount(idx[inside], weights=v[inside], minlength=n_cls)
    total_n, total_v = count.sum(), vol.sum()
    return {
        "bins_um3": list(edges),
        "labels": size_bin_labels(edges),
        "count": [int(c) for c in count],
        "count_pct": [100.0 * c / total_n if total_n else float("nan") for c in count],
        "volume_um3": [float(x) for x in vol],
        "volume_pct": [100.0 * x / total_v if total_v else float("nan") for x in vol],
    }


@dataclass(frozen=True)
class ParticleGeometry:
    """The particle body: voxel count, volume (µm³), centroid (z, y, x in µm) and R (µm)."""

    n_voxels: int
    volume_um3: float
    centroid_um: tuple[float, float, float]
    radius_um: float

    @property
    def eq_diameter_um(self) -> float:
        """Diameter of the sphere with the particle's volume."""
        return 2.0 * self.radius_um


class ParticleAccumulator:
    """Voxel count and centroid of the particle mask, summed over chunks."""

    def __init__(self) -> None:
        self.n = 0
        self.sums = np.zeros(3, np.float64)

    def add(self, z0: int, particle: np.ndarray) -> None:
        """Count the particle voxels of slices ``z0 ..``."""
        per_z = particle.sum(axis=(1, 2), dtype=np.int64)
        self.n += int(per_z.sum())
        self.sums[0] += float(np.dot(per_z, np.arange(z0, z0 + len(per_z))))
        self.sums[1] += float(np.dot(particle.sum(axis=(0, 2), dtype=np.int64), np.arange(particle.shape[1])))
        self.sums[2] += float(np.dot(particle.sum(axis=(0, 1), dtype=np.int64), np.arange(particle.shape[2])))

    def result(self, voxel: VoxelSize) -> ParticleGeometry:
        """The particle's geometry in µm (NaN centre and 0 radius for an empty mask)."""
        if self.n == 0:
            return ParticleGeometry(0, 0.0, (math.nan,) * 3, 0.0)
        volume = self.n * voxel.volume_um3
        centroid = tuple(float(s / self.n * d) for s, d in zip(self.sums, voxel.zyx))
        return ParticleGeometry(self.n, volume, centroid, float(np.cbrt(3.0 * volume / (4.0 * math.pi))))


def outside_neighbours(pores: np.ndarray, particle_halo: np.ndarray, halo_before: int, st: np.ndarray) -> np.ndarray:
    """Pore voxels with a neighbour (under `st`) outside the particle.

    Parameters
    ----------
    pores : bool (n, Y, X)
        Pore voxels of a chunk.
    particle_halo : bool (n + halo_before + halo_after, Y, X)
        The particle mask of the chunk with up to one slice before and after it, so pores
        on the chunk's faces see their neighbours. Beyond the stack nothing counts as outside.
    halo_before : 0 or 1
        Slices of `particle_halo` before the chunk.
    """
    near_outside = ndi.binary_dilation(~particle_halo, st)
    return pores & near_outside[halo_before : halo_before + len(pores)]


class PoreAccumulator:
    """Per-pore sums over chunks of final labels: voxels, centroid, bounding box, openness.

    Parameters
    ----------
    n : number of pores (labels 1 .. n).
    shape : (Z, Y, X) of the stack (for `touches_border`).
    """

    def __init__(self, n: int, shape: tuple[int, int, int]) -> None:
        self.n = int(n)
        self.shape = tuple(int(s) for s in shape)
        self.count = np.zeros(n + 1, np.int64)
        self.sums = np.zeros((3, n + 1), np.float64)
        big = np.iinfo(np.int64).max
        self.lo = np.full((3, n + 1), big, np.int64)
        self.hi = np.full((3, n + 1), -1, np.int64)
        self.open = np.zeros(n + 1, bool)

    def add(self, z0: int, labels: np.ndarray, open_voxels: np.ndarray | None = None) -> None:
        """Accumulate a chunk of final labels (slices ``z0 ..``).

        open_voxels : bool, same shape, optional
            Pore voxels next to the outside (`outside_neighbours`).
        """
        flat = np.flatnonzero(labels)
        if flat.size == 0:
            return
        ids = labels.ravel()[flat].astype(np.int64)
        coords = np.unravel_index(flat, labels.shape)
        self.count += np.bincount(ids, minlength=self.n + 1)
        for axis, c in enumerate(coords):
            c = c.astype(np.int64) + (z0 if axis == 0 else 0)
            self.sums[axis] += np.bincount(ids, weights=c, minlength=self.n + 1)
            np.minimum.at(self.lo[axis], ids, c)
            np.maximum.at(self.hi[axis], ids, c)
        if open_voxels is not None:
            hit = labels[open_voxels]
            self.open[np.unique(hit[hit > 0])] = True

    def table(self, voxel: VoxelSize, particle: ParticleGeometry) -> dict[str, np.ndarray]:
        """Columns of pores.csv, one row per pore, in label order (see the module docstring)."""
        ids = np.arange(1, self.n + 1)
        n_vox = self.count[1:]
        safe = np.maximum(n_vox, 1)
        zyx = np.asarray(voxel.zyx)
        centroid = self.sums[:, 1:] / safe * zyx[:, None]
        volume = n_vox * voxel.volume_um3
        dist = np.sqrt(((centroid - np.asarray(particle.centroid_um)[:, None]) ** 2).sum(axis=0))
        lo, hi = self.lo[:, 1:], self.hi[:, 1:]
        border = (lo == 0).any(axis=0) | (hi == np.asarray(self.shape)[:, None] - 1).any(axis=0)
        radius = particle.radius_um if particle.radius_um > 0 else math.nan
        return {
            "pore_id": ids,
            "n_voxels": n_vox,
            "volume_um3": volume,
            "eq_diameter_um": eq_diameter_um(volume),
            "centroid_z_um": centroid[0],
            "centroid_y_um": centroid[1],
            "centroid_x_um": centroid[2],
            "distance_um": dist,
            "r_rel": dist / radius,
            "touches_outside": self.open[1:].copy(),
            "touches_border": border,
            "bbox_z0": lo[0], "bbox_y0": lo[1], "bbox_x0": lo[2],
            "bbox_z1": hi[0] + 1, "bbox_y1": hi[1] + 1, "bbox_x1": hi[2] + 1,
        }


@dataclass(frozen=True)
class RadialShells:
    """Porosity against distance from the particle centre (3-D Fig. 2h).

    fractions : shell edges as fractions f of R.
    particle_voxels, pore_voxels, void_voxels : per shell; shell 0 is the inner sphere
        0 .. f0·R, shell i lies between f(i-1)·R and f(i)·R, and a last shell holds the
        particle beyond the largest fraction (lumps outside the equal-volume sphere).
    Pores are the kept pores; voids also count the noise specks below the volume threshold.
    """

    fractions: tuple[float, ...]
    particle_voxels: tuple[int, ...]
    pore_voxels: tuple[int, ...]
    void_voxels: tuple[int, ...]

    @staticmethod
    def _pct(num, den) -> list[float]:
        return [100.0 * a / b if b else float("nan") for a, b in zip(num, den)]

    @property
    def shell_pct(self) -> list[float]:
        """Porosity of each shell (kept pores), the beyond-R shell last."""
        return self._pct(self.pore_voxels, self.particle_voxels)

    @property
    def shell_void_pct(self) -> list[float]:
        """As `shell_pct`, counting every void voxel."""
        return self._pct(self.void_voxels, self.particle_voxels)

    @property
    def sphere_pct(self) -> list[float]:
        """Porosity inside the sphere of f·R, for each fraction f (cumulative shells)."""
        n = len(self.fractions)
        return self._pct(np.cumsum(self.pore_voxels)[:n], np.cumsum(self.particle_voxels)[:n])

    def as_dict(self) -> dict:
        """JSON-ready form for summary.json."""
        return {
            "fractions": list(self.fractions),
            "shell_pct": self.shell_pct,
            "shell_void_pct": self.shell_void_pct,
            "sphere_pct": self.sphere_pct,
            "particle_voxels": list(self.particle_voxels),
            "pore_voxels": list(self.pore_voxels),
            "void_voxels": list(self.void_voxels),
        }


class ShellAccumulator:
    """Particle, pore and void voxels per radial shell, summed over chunks.

    Parameters
    ----------
    fractions : increasing positive shell edges (fractions of R).
    particle : ParticleGeometry (centre and R).
    voxel : VoxelSize.
    """

    def __init__(self, fractions: tuple[float, ...], particle: ParticleGeometry, voxel: VoxelSize) -> None:
        fr = tuple(float(f) for f in fractions)
        if not fr or fr[0] <= 0 or any(b <= a for a, b in zip(fr[:-1], fr[1:])):
            raise ValueError(f"shell fractions must be positive and increasing, got {fractions}")
        self.fractions = fr
        self.particle = particle
        self.voxel = voxel
        n = len(fr) + 1
        self.counts = np.zeros((3, n), np.int64)  # particle, pore, void

    def add(self, z0: int, particle: np.ndarray, pores: np.ndarray, voids: np.ndarray) -> None:
        """Accumulate slices ``z0 ..`` (bool masks of equal shape)."""
        if self.particle.n_voxels == 0:
            return
        cz, cy, cx = self.particle.centroid_um
        vz, vy, vx = self.voxel.zyx
        dy2 = ((np.arange(particle.shape[1]) * vy - cy) ** 2)[:, None]
        dx2 = ((np.arange(particle.shape[2]) * vx - cx) ** 2)[None, :]
        plane = (dy2 + dx2).astype(np.float64)
        edges2 = (np.asarray(self.fractions) * self.particle.radius_um) ** 2
        n = len(self.fractions) + 1
        for i in range(len(particle)):
            m = particle[i]
            if not m.any():
                continue
            d2 = plane + ((z0 + i) * vz - cz) ** 2
            shell = np.searchsorted(edges2, d2[m], side="left")
            self.counts[0] += np.bincount(shell, minlength=n)
            self.counts[1] += np.bincount(shell, weights=pores[i][m], minlength=n).astype(np.int64)
            self.counts[2] += np.bincount(shell, weights=voids[i][m], minlength=n).astype(np.int64)

    def result(self) -> RadialShells:
        """The shells' voxel counts."""
        c = self.counts
        return RadialShells(self.fractions, tuple(int(v) for v in c[0]), tuple(int(v) for v in c[1]),
                            tuple(int(v) for v in c[2]))
