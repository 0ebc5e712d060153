"""3-D connected components of a volume streamed in z-chunks, equal to `scipy.ndimage.label`.

Each chunk of slices is labelled alone with `scipy.ndimage.label`. Its components get
*provisional* ids, written wherever the caller keeps them (a memory map for large stacks).
Where two chunks meet, every pair of provisional ids that touch across the face (under the
chosen connectivity) is recorded; at the end the pairs are merged as the edges of a graph
(`scipy.sparse.csgraph.connected_components`), so a pore that crosses a chunk boundary is
one pore, never two.

Final ids are numbered by each component's first voxel in raster (z, y, x) order, which is
how `scipy.ndimage.label` numbers them, so chunked and unchunked labels are identical, not
merely equal up to a permutation. A component smaller than ``min_voxels`` gets label 0; one
that lies wholly inside a chunk is dropped at once, so tiny noise specks never take memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CONNECTIVITIES: dict[int, int] = {6: 1, 18: 2, 26: 3}


def structure(connectivity: int) -> np.ndarray:
    """3×3×3 neighbourhood: 6 (faces), 18 (faces and edges) or 26 (faces, edges and corners)."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return ndi.generate_binary_structure(3, CONNECTIVITIES[connectivity])


def _face_offsets(connectivity: int) -> list[tuple[int, int]]:
    """In-plane offsets (dy, dx) of the neighbours one slice further on."""
    st = structure(connectivity)[2]
    return [(dy - 1, dx - 1) for dy, dx in zip(*np.nonzero(st))]


def face_pairs(prev: np.ndarray, cur: np.ndarray, connectivity: int) -> np.ndarray:
    """Unique (a, b) id pairs where a voxel of `prev` touches one of `cur` in the next slice.

    Parameters
    ----------
    prev, cur : ndarray of uint32, shape (Y, X)
        Labels of the last slice of one chunk and of the first slice of the next (0 = none).

    Returns
    -------
    ndarray of uint32, shape (K, 2)
    """
    h, w = prev.shape
    keys = []
    for dy, dx in _face_offsets(connectivity):
        a = prev[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        b = cur[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
        hit = (a > 0) & (b > 0)
        if hit.any():
            keys.append((a[hit].astype(np.uint64) << np.uint64(32)) | b[hit].astype(np.uint64))
    if not keys:
        return np.zeros((0, 2), np.uint32)
    u = np.unique(np.concatenate(keys))
    return np.stack([(u >> np.uint64(32)).astype(np.uint32), (u & np.uint64(0xFFFFFFFF)).astype(np.uint32)], axis=1)


@dataclass(frozen=True)
class LabelMerge:
    """The outcome of chunked labelling.

    lut : uint32 array, provisional id -> final id (0 = background or dropped).
    counts : int64 voxels per final id; ``counts[0]`` is 0.
    n : number of final components.
    n_dropped : components below ``min_voxels``.
    dropped_voxels : voxels in those components.
    """

    lut: np.ndarray
    counts: np.ndarray
    n: int
    n_dropped: int
    dropped_voxels: int

    def apply(self, provisional: np.ndarray) -> np.ndarray:
        """Final labels of a block of provisional labels."""
        return self.lut[provisional]


class ChunkedLabeler:
    """Label a (Z, Y, X) mask chunk by chunk, in z order (see the module docstring).

    Parameters
    ----------
    shape : (Z, Y, X) of the whole volume.
    connectivity : 6, 18 or 26.
    min_voxels : components with fewer voxels become 0.
    """

    def __init__(self, shape: tuple[int, int, int], connectivity: int = 6, min_voxels: int = 0) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.connectivity = int(connectivity)
        self.structure = structure(self.connectivity)
        self.min_voxels = int(min_voxels)
        self._next_z = 0
        self._n = 0  # provisional ids issued
        self._counts: list[np.ndarray] = []
        self._pairs: list[np.ndarray] = []
        self._last: np.ndarray | None = None
        self._n_dropped = 0
        self._dropped_voxels = 0

    def add(self, z0: int, mask: np.ndarray) -> np.ndarray:
        """Label the next chunk, slices ``z0 .. z0 + len(mask) - 1``.

        Returns
        -------
        ndarray of uint32, shape of `mask`
            Provisional ids (0 = background or a dropped speck); store them for `LabelMerge.apply`.
        """
        if z0 != self._next_z:
            raise ValueError(f"chunks must arrive in order: expected z0={self._next_z}, got {z0}")
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3 or mask.shape[1:] != self.shape[1:]:
            raise ValueError(f"chunk shape {mask.shape} does not fit a volume of {self.shape}")
        z1 = z0 + mask.shape[0]
        if z1 > self.shape[0]:
            raise ValueError(f"chunk {z0}:{z1} runs past the volume's {self.shape[0]} slices")
        local, n_local = ndi.label(mask, self.structure, output=np.int32)
        counts = np.bincount(local.ravel(), minlength=n_local + 1)
        # Components on an inner chunk face may continue in a neighbour: keep them whatever their size.
        open_face = np.zeros(n_local + 1, bool)
        if z0 > 0:
            open_face[local[0]] = True
        if z1 < self.shape[0]:
            open_face[local[-1]] = True
        keep = (counts >= self.min_voxels) | open_face
        keep[0] = False
        small = ~keep
        small[0] = False
        self._n_dropped += int(small.sum())
        self._dropped_voxels += int(counts[small].sum())
        ids = np.flatnonzero(keep)
        to_prov = np.zeros(n_local + 1, np.uint32)
        to_prov[ids] = np.arange(self._n + 1, self._n + 1 + ids.size, dtype=np.uint32)
        prov = to_prov[local]
        if self._last is not None and len(prov):
            self._pairs.append(face_pairs(self._last, prov[0], self.connectivity))
        self._last = prov[-1].copy() if len(prov) else self._last
        self._counts.append(counts[ids].astype(np.int64))
        self._n += int(ids.size)
        self._next_z = z1
        return prov

    def finish(self) -> LabelMerge:
        """Merge components across chunk faces, drop small ones, and number them in raster order."""
        if self._next_z != self.shape[0]:
            raise ValueError(f"only {self._next_z} of {self.shape[0]} slices were labelled")
        n = self._n
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        if n == 0:
            return LabelMerge(np.zeros(1, np.uint32), np.zeros(1, np.int64), 0, self._n_dropped, self._dropped_voxels)
        pairs = np.concatenate(self._pairs) if self._pairs else np.zeros((0, 2), np.uint32)
        if len(pairs):
            graph = coo_matrix(
                (np.ones(len(pairs), np.int8), (pairs[:, 0].astype(np.int64) - 1, pairs[:, 1].astype(np.int64) - 1)),
                shape=(n, n),
            )
            n_comp, comp = connected_components(graph, directed=False)
        else:
            n_comp, comp = n, np.arange(n)
        # Provisional ids grow in raster order of first voxels, so a component's smallest
        # id ranks it as scipy.ndimage.label would.
        first = np.full(n_comp, n, np.int64)
        np.minimum.at(first, comp, np.arange(n))
        comp_counts = np.bincount(comp, weights=counts, minlength=n_comp).astype(np.int64)
        kept = comp_counts >= self.min_voxels
        order = np.argsort(first, kind="stable")
        order = order[kept[order]]
        final_of_comp = np.zeros(n_comp, np.uint32)
        final_of_comp[order] = np.arange(1, order.size + 1, dtype=np.uint32)
        lut = np.zeros(n + 1, np.uint32)
        lut[1:] = final_of_comp[comp]
        final_counts = np.zeros(order.size + 1, np.int64)
        final_counts[1:] = comp_counts[order]
        return LabelMerge(
            lut=lut,
            counts=final_counts,
            n=int(order.size),
            n_dropped=self._n_dropped + int((~kept).sum()),
            dropped_voxels=self._dropped_voxels + int(comp_counts[~kept].sum()),
        )


def label_chunked(mask: np.ndarray, connectivity: int = 6, chunk_z: int = 16,
                  min_voxels: int = 0) -> tuple[np.ndarray, LabelMerge]:
    """Chunked labelling of an in-memory mask (the reference path for tests and small volumes).

    Returns
    -------
    labels : ndarray of uint32, final ids
    merge : LabelMerge
    """
    mask = np.asarray(mask, dtype=bool)
    labeler = ChunkedLabeler(mask.shape, connectivity, min_voxels)
    prov = np.zeros(mask.shape, np.uint32)
    for z0 in range(0, mask.shape[0], max(1, int(chunk_z))):
        z1 = min(z0 + max(1, int(chunk_z)), mask.shape[0])
        prov[z0:z1] = labeler.add(z0, mask[z0:z1])
    merge = labeler.finish()
    return merge.apply(prov), merge
