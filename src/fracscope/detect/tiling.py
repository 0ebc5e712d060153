"""Tiled detection: run any `Detector` on overlapping tiles of an image of any size.

Large mosaics do not fit a detector's working memory, and naive tiling cuts particles
at the seams or counts them twice. Here each tile is detected on its own, and an
object is kept by exactly one tile:

* the tiles' *cores* partition the image (core boundaries run through the middle of
  each overlap);
* an object that touches no tile edge interior to the image is whole in this tile; it
  is kept iff the centre of its bounding box lies in the tile's core. Whole copies of
  one object in two tiles have the same bounding box, hence the same centre, hence one
  owner;
* an object that touches an interior tile edge is cut there. If its extent along that
  axis is smaller than the overlap on that side it is whole in the neighbouring tile
  and is dropped here. If it spans the whole overlap it cannot be whole in any tile
  (it is *oversized*): its piece in this tile is kept and flagged, and flagged pieces
  of neighbouring tiles that share pixels in the overlap are merged into one object.
  Oversized objects are counted and warned about (`OversizedObjectWarning`), never cut
  silently.

Memory is bounded by the tile size: the input may be an ``np.memmap`` or a
``tifffile.memmap`` and the output a label memmap from `fracscope.io.open_label_memmap`;
mapped pages are handed back to the OS after every row of tiles. `fracscope.io.write_label_tiff`
with ``tile_px`` streams a label memmap into a tiled BigTIFF.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from fracscope.detect.base import Detector, build_detector
from fracscope.io.memmap import release_pages
from fracscope.types import SEMImage

# Largest expected secondary-particle section (DOMAIN: 5-15 µm) plus margin; sets the
# default overlap when the pixel size is known.
MAX_PARTICLE_DIAMETER_UM = 20.0
# Default overlap when the pixel size is unknown (about 20 µm at 0.04 µm/px).
DEFAULT_OVERLAP_PX = 512
# Pixels beyond the bounding box that the overlap must also cover (see `detect_tiled`).
_OVERLAP_MARGIN_PX = 2

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), end-exclusive


class OversizedObjectWarning(UserWarning):
    """An object spanned a whole tile overlap, so no tile saw it whole."""


def _spans(n: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Evenly spaced windows of length `tile` covering [0, n) with overlaps >= `overlap`."""
    if n <= tile:
        return [(0, n)]
    k = math.ceil((n - overlap) / (tile - overlap))
    starts = np.round(np.linspace(0, n - tile, k)).astype(int)
    return [(int(s), int(s) + tile) for s in starts]


def _cores(spans: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """Core of each span: cut every overlap in the middle, so the cores partition [0, n)."""
    cuts = [0] + [(spans[i + 1][0] + spans[i][1]) // 2 for i in range(len(spans) - 1)] + [n]
    return [(cuts[i], cuts[i + 1]) for i in range(len(spans))]


@dataclass(frozen=True)
class Tile:
    """One tile of a `TileGrid`.

    index: (tile row, tile column).
    bbox: (row0, col0, row1, col1) of the tile window in the image, end-exclusive.
    core: (row0, col0, row1, col1) of the pixels this tile owns; the cores of a grid
        partition the image.
    overlap: overlap in pixels with the (top, left, bottom, right) neighbour, 0 where
        that side is the image border.
    """

    index: tuple[int, int]
    bbox: Box
    core: Box
    overlap: tuple[int, int, int, int]

    @property
    def slices(self) -> tuple[slice, slice]:
        """The tile window as a pair of slices."""
        r0, c0, r1, c1 = self.bbox
        return slice(r0, r1), slice(c0, c1)

    @property
    def interior(self) -> tuple[bool, bool, bool, bool]:
        """Whether the (top, left, bottom, right) edge lies inside the image."""
        return tuple(o > 0 for o in self.overlap)  # type: ignore[return-value]


class TileGrid:
    """Overlapping tiles of an image whose cores partition it.

    Parameters
    ----------
    shape : (int, int)
        Image shape (rows, columns).
    tile : int
        Tile edge in pixels (tiles are clipped to the image when it is smaller).
    overlap : int
        Smallest overlap between neighbouring tiles, in pixels (0 <= overlap < tile).
        Tiles are spread evenly, so actual overlaps can be larger.

    Examples
    --------
    >>> grid = TileGrid((5000, 3000), tile=2048, overlap=256)
    >>> len(grid), grid.n_rows, grid.n_cols
    (6, 3, 2)
    """

    def __init__(self, shape: tuple[int, int], tile: int, overlap: int) -> None:
        if len(shape) != 2:
            raise ValueError(f"expected a 2-D shape, got {shape}")
        if not 0 <= overlap < tile:
            raise ValueError(f"need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.tile = int(tile)
        self.overlap = int(overlap)
        self._rows = _spans(self.shape[0], self.tile, self.overlap)
        self._cols = _spans(self.shape[1], self.tile, self.overlap)
        self._row_cores = _cores(self._rows, self.shape[0])
        self._col_cores = _cores(self._cols, self.shape[1])

    @property
    def n_rows(self) -> int:
        """Number of tile rows."""
        return len(self._rows)

    @property
    def n_cols(self) -> int:
        """Number of tile columns."""
        return len(self._cols)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    @staticmethod
    def _side_overlaps(spans: list[tuple[int, int]], i: int) -> tuple[int, int]:
        before = spans[i - 1][1] - spans[i][0] if i > 0 else 0
        after = spans[i][1] - spans[i + 1][0] if i + 1 < len(spans) else 0
        return before, after

    def __getitem__(self, index: tuple[int, int]) -> Tile:
        i, j = index
        (r0, r1), (c0, c1) = self._rows[i], self._cols[j]
        (k0, k1), (l0, l1) = self._row_cores[i], self._col_cores[j]
        top, bottom = self._side_overlaps(self._rows, i)
        left, right = self._side_overlaps(self._cols, j)
        return Tile((i, j), (r0, c0, r1, c1), (k0, l0, k1, l1), (top, left, bottom, right))

    def __iter__(self) -> Iterator[Tile]:
        for i in range(self.n_rows):
            for j in range(self.n_cols):
                yield self[i, j]

    def row_seams(self) -> list[int]:
        """Image rows where one tile row's core ends and the next begins."""
        return [k0 for k0, _ in self._row_cores[1:]]

    def col_seams(self) -> list[int]:
        """Image columns where one tile column's core ends and the next begins."""
        return [l0 for l0, _ in self._col_cores[1:]]


@dataclass
class TiledResult:
    """What `detect_tiled_report` produced.

    labels: the uint32 label map (the `out` array when one was given), labels 1..N.
    n_objects: N.
    oversized_ids: labels of objects larger than the overlap (extent + 2 px > overlap):
        the tiling assumption fails for them, so they are reported.
    stitched_ids: the oversized objects that no tile saw whole, merged from pieces.
    conflict_px: pixels claimed by two kept objects; the earlier one (tiles in raster
        order) kept them.
    n_tiles: number of tiles detected.
    """

    labels: np.ndarray
    n_objects: int
    oversized_ids: tuple[int, ...]
    stitched_ids: tuple[int, ...]
    conflict_px: int
    n_tiles: int


def default_overlap_px(pixel_size_um: float | None) -> int:
    """Overlap that covers a `MAX_PARTICLE_DIAMETER_UM` particle at this pixel size."""
    if pixel_size_um is None or not pixel_size_um > 0:
        return DEFAULT_OVERLAP_PX
    return math.ceil(MAX_PARTICLE_DIAMETER_UM / pixel_size_um) + _OVERLAP_MARGIN_PX


def tile_objects(tile: Tile, labels: np.ndarray) -> Iterator[tuple[int, tuple[slice, slice], bool]]:
    """The objects of a tile's label map that this tile keeps, as (label, box, oversized), in label order.

    An object that touches no tile edge interior to the image is whole here, and kept iff the centre of
    its bounding box lies in the tile's core. One cut at an interior edge is kept only as an *oversized*
    piece, when it spans the whole overlap on that side (no tile sees it whole); a narrower one is whole
    in the neighbouring tile and is left to it.
    """
    r0, c0 = tile.bbox[:2]
    k0, l0, k1, l1 = tile.core
    h, w = labels.shape
    top, left, bottom, right = tile.interior
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        a0, a1, b0, b1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        # Overlap on each side the object is cut at (0 where not cut).
        cut_rows = (tile.overlap[0] if top and a0 == 0 else 0, tile.overlap[2] if bottom and a1 == h else 0)
        cut_cols = (tile.overlap[1] if left and b0 == 0 else 0, tile.overlap[3] if right and b1 == w else 0)
        if not any(cut_rows + cut_cols):
            cy, cx = r0 + (a0 + a1 - 1) // 2, c0 + (b0 + b1 - 1) // 2
            if k0 <= cy < k1 and l0 <= cx < l1:
                yield k, sl, False
        elif any(0 < o <= a1 - a0 for o in cut_rows) or any(0 < o <= b1 - b0 for o in cut_cols):
            yield k, sl, True


def owned_objects(tile: Tile, labels: np.ndarray) -> tuple[list[tuple[int, tuple[slice, slice]]], int]:
    """The objects this tile sees whole and owns (label, box), and how many oversized pieces it left out."""
    kept, n_oversized = [], 0
    for k, sl, oversized in tile_objects(tile, labels):
        if oversized:
            n_oversized += 1
        else:
            kept.append((k, sl))
    return kept, n_oversized


def tile_grid(shape: tuple[int, ...], tile_px: int, overlap_px: int | None, pixel_size_um: float | None) -> TileGrid:
    """The grid `detect_tiled` uses: without `overlap_px`, one that covers a `MAX_PARTICLE_DIAMETER_UM`
    particle at this pixel size, with tiles grown to at least 4x that overlap."""
    if overlap_px is None:
        overlap_px = default_overlap_px(pixel_size_um)
        tile_px = max(int(tile_px), 4 * overlap_px)
    return TileGrid((int(shape[0]), int(shape[1])), int(tile_px), int(overlap_px))


def _as_source(image: SEMImage | np.ndarray, pixel_size_um: float | None) -> tuple[Any, float | None, str]:
    if isinstance(image, SEMImage):
        return image.pixels, image.pixel_size_um, image.pixel_size_source
    return image, pixel_size_um, "override" if pixel_size_um is not None else "none"


# Two oversized pieces from different tiles are one object when they share at least
# this many pixels and this fraction of the new piece's already-claimed pixels; a
# pixel or two of disagreement on a shared boundary does not glue two objects.
_MERGE_MIN_PX = 5
_MERGE_MIN_FRACTION = 0.1


class _Stitcher:
    """Decides per object which tile keeps it and writes kept objects into ``out``."""

    def __init__(self, out: Any, grid: TileGrid) -> None:
        self.out = out
        # Extent (+ margin) above which an object is too large for the overlap, per axis;
        # an axis with a single tile cuts nothing.
        self.max_extent = (
            grid.overlap - _OVERLAP_MARGIN_PX if grid.n_rows > 1 else grid.shape[0],
            grid.overlap - _OVERLAP_MARGIN_PX if grid.n_cols > 1 else grid.shape[1],
        )
        self.next_id = 1
        self.conflict_px = 0
        self.flagged: set[int] = set()  # oversized pieces (cut in every tile)
        self.large: set[int] = set()  # whole somewhere, but too large for the overlap
        self.links: list[tuple[int, int]] = []

    def add_tile(self, tile: Tile, labels: np.ndarray) -> None:
        """Keep this tile's objects that it owns; link oversized pieces to earlier ones."""
        r0, c0, r1, c1 = tile.bbox
        block = np.array(self.out[r0:r1, c0:c1])
        for k, sl, oversized in tile_objects(tile, labels):
            gid = self._write(block, sl, labels[sl] == k, oversized=oversized)
            if gid and not oversized and (
                sl[0].stop - sl[0].start > self.max_extent[0] or sl[1].stop - sl[1].start > self.max_extent[1]
            ):
                self.large.add(gid)
        self.out[r0:r1, c0:c1] = block

    def _write(self, block: np.ndarray, sl: tuple[slice, slice], obj: np.ndarray, oversized: bool) -> int:
        """Paint `obj` where `block` is still free (earlier objects win conflicts); returns its id or 0.

        An oversized piece is painted whole (not clipped to the core, since the
        neighbour may not keep the rest) and linked to the earlier oversized pieces it
        overlaps.
        """
        view = block[sl]
        claimed = obj & (view != 0)
        free = obj & ~claimed
        same: list[int] = []  # earlier oversized pieces of this object
        if oversized and claimed.any():
            owners, counts = np.unique(view[claimed], return_counts=True)
            enough = max(_MERGE_MIN_PX, _MERGE_MIN_FRACTION * int(claimed.sum()))
            pairs = zip(owners.tolist(), counts.tolist(), strict=True)
            same = [o for o, c in pairs if o in self.flagged and c >= enough]
        # Pixels shared with earlier pieces of the same object are not conflicts.
        self.conflict_px += int(np.count_nonzero(claimed & ~np.isin(view, same)))
        gid = 0
        if free.any():
            gid = self.next_id
            self.next_id += 1
            view[free] = gid
            if oversized:
                self.flagged.add(gid)
            same.append(gid)
        self.links.extend((same[0], other) for other in same[1:])
        return gid

    def finish(self) -> tuple[np.ndarray | None, tuple[int, ...], tuple[int, ...]]:
        """Union linked pieces.

        Returns a lookup table old id -> new consecutive id (None when nothing was
        merged), the final ids of all objects too large for the overlap, and of those
        stitched from pieces.
        """
        if not self.flagged:
            return None, tuple(sorted(self.large)), ()
        parent = np.arange(self.next_id)

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in self.links:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        roots = np.array([root(i) for i in range(self.next_id)])
        keep = roots == np.arange(self.next_id)
        lut = (np.cumsum(keep) - 1)[roots].astype(np.uint32)  # id 0 stays 0
        stitched = {int(lut[g]) for g in self.flagged}
        oversized = stitched | {int(lut[g]) for g in self.large}
        return (lut if self.links else None), tuple(sorted(oversized)), tuple(sorted(stitched))


def detect_tiled_report(
    image: SEMImage | np.ndarray,
    detector: Detector,
    tile_px: int = 2048,
    overlap_px: int | None = None,
    out: np.ndarray | None = None,
    pixel_size_um: float | None = None,
) -> TiledResult:
    """`detect_tiled` with bookkeeping: object count, oversized objects, conflicts.

    See `detect_tiled` for the parameters.
    """
    pixels, px_um, px_source = _as_source(image, pixel_size_um)
    shape = tuple(int(s) for s in pixels.shape)
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {shape}")
    # At fine pixel sizes the default overlap outgrows the tile: the grid grows the tile.
    grid = tile_grid(shape, tile_px, overlap_px, px_um)
    tile_px, overlap_px = grid.tile, grid.overlap
    if out is None:
        out = np.zeros(shape, np.uint32)
    elif tuple(out.shape) != shape or out.dtype != np.uint32:
        raise ValueError(f"out must be uint32 of shape {shape}, got {out.dtype} {tuple(out.shape)}")
    stitcher = _Stitcher(out, grid)
    zeroed_to = 0  # rows of `out` cleared so far: cleared band by band to keep RSS low
    for tile in grid:
        if tile.bbox[2] > zeroed_to:
            out[zeroed_to : tile.bbox[2]] = 0
            zeroed_to = tile.bbox[2]
        sub = SEMImage(
            pixels=np.asarray(pixels[tile.slices]),
            pixel_size_um=px_um,
            pixel_size_source=px_source,
            source=getattr(image, "source", ""),
            page=getattr(image, "page", 0),
            estimated_pixel_size_um=getattr(image, "estimated_pixel_size_um", None),  # one scale for all tiles
        )
        labels = np.asarray(detector.detect(sub))
        if labels.shape != sub.pixels.shape:
            raise ValueError(f"detector returned shape {labels.shape} for a tile of shape {sub.pixels.shape}")
        stitcher.add_tile(tile, labels)
        if tile.index[1] == grid.n_cols - 1:
            release_pages(pixels)
            release_pages(out)
    lut, oversized, stitched = stitcher.finish()
    n_objects = stitcher.next_id - 1
    if lut is not None:
        for r in range(0, shape[0], tile_px):
            out[r : r + tile_px] = lut[np.asarray(out[r : r + tile_px])]
            release_pages(out)
        n_objects = int(lut.max())
    if oversized:
        warnings.warn(
            f"{len(oversized)} object(s) are larger than the tile overlap ({overlap_px} px), "
            f"{len(stitched)} of them cut by every tile and stitched from pieces; raise overlap_px "
            f"above the largest object's diameter for results independent of the tiling",
            OversizedObjectWarning,
            stacklevel=2,
        )
    return TiledResult(
        labels=out,
        n_objects=n_objects,
        oversized_ids=oversized,
        stitched_ids=stitched,
        conflict_px=stitcher.conflict_px,
        n_tiles=len(grid),
    )


def detect_tiled(
    image: SEMImage | np.ndarray,
    detector: Detector,
    tile_px: int = 2048,
    overlap_px: int | None = None,
    out: np.ndarray | None = None,
    pixel_size_um: float | None = None,
) -> np.ndarray:
    """Detect particles tile by tile, so memory is bounded by the tile, not the image.

    Each tile's pixels go to ``detector.detect`` as a sub-`SEMImage` with the image's
    pixel size. An object is kept by the one tile whose core holds the centre of its
    bounding box, and only if it touches no tile edge interior to the image; kept
    objects are relabelled 1..N in tile raster order.

    Assumption: ``overlap_px`` >= the largest object's bounding-box extent in pixels
    + 2, so every object lies whole, off the edges, inside at least one tile; then the
    result equals the untiled detection (for a detector that only looks at local
    pixels) up to relabelling. Larger objects are stitched from their pieces in the
    tiles (merged where pieces share pixels in an overlap), counted, and reported with
    an `OversizedObjectWarning`.
    Conflicts (a pixel claimed by two kept objects) go to the earlier object in tile
    raster order. Detectors with global steps (e.g. an Otsu threshold per image) see
    a tile's statistics instead of the image's; use tiles large enough to hold both
    particles and matrix.

    Parameters
    ----------
    image : SEMImage or array-like
        The image; its pixels (or the array itself) may be an ``np.memmap`` or a
        ``tifffile.memmap``: only one tile is read at a time.
    detector : Detector
        Any detector; it sees one tile at a time.
    tile_px : int
        Tile edge in pixels.
    overlap_px : int, optional
        Overlap between tiles; default `default_overlap_px` of the pixel size
        (a 20 µm particle, or 512 px when the pixel size is unknown), in which case
        the tile grows to at least 4x the overlap.
    out : ndarray, optional
        uint32 array of the image's shape to write into, e.g. `fracscope.io.open_label_memmap`;
        it is zeroed first. Default: a new in-memory array.
    pixel_size_um : float, optional
        Pixel size when `image` is a bare array.

    Returns
    -------
    ndarray
        uint32 label map (``out`` when given), 0 = matrix, objects 1..N.

    Examples
    --------
    >>> from fracscope.detect import ClassicalDetector
    >>> labels = detect_tiled(image, ClassicalDetector(), tile_px=2048)  # doctest: +SKIP
    """
    return detect_tiled_report(image, detector, tile_px, overlap_px, out, pixel_size_um).labels


class TiledDetector(Detector):
    """A `Detector` that runs another detector tile by tile (`detect_tiled`).

    Parameters
    ----------
    detector : Detector or mapping
        The inner detector, or its config for `build_detector`
        (e.g. ``{"name": "classical"}``).
    tile_px, overlap_px : int
        As in `detect_tiled`.
    """

    name = "tiled"

    def __init__(
        self, detector: Detector | Mapping[str, Any], tile_px: int = 2048, overlap_px: int | None = None
    ) -> None:
        self.detector = detector if isinstance(detector, Detector) else build_detector(detector)
        self.tile_px = int(tile_px)
        self.overlap_px = overlap_px
        self.min_diameter_um = self.detector.min_diameter_um

    def estimate_pixel_size_um(self, pixels: np.ndarray) -> float | None:
        """The inner detector's estimate (`Detector.estimate_pixel_size_um`)."""
        return self.detector.estimate_pixel_size_um(pixels)

    def detect(self, image: SEMImage) -> np.ndarray:
        """Instance label map of `image`, detected tile by tile."""
        return detect_tiled(image, self.detector, self.tile_px, self.overlap_px)
