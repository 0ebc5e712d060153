"""Classical particle detector: threshold, close cracks, fill pores, split touching particles.

Steps, at a coarse working pixel size (about 0.12 µm/px) for speed:

1. block-mean downsample, robust [0, 1] normalisation, Gaussian smoothing;
2. global threshold (Otsu by default): cathode particles are brighter than the
   carbon-binder matrix. Pt-filled (bright) pores are above it anyway, dark pores are
   filled in step 4, so pore polarity does not matter;
3. opening removes binder specks and thin bright bridges; closing bridges cracks so a
   broken particle stays one body;
4. holes are filled (pores, closed cracks), up to `max_hole_diameter_um`;
5. distance-transform watershed from low h-maxima seeds (so satellites nestled against
   a large particle get their own seed) splits touching particles, then neighbours are
   merged back when the neck between them is wide relative to the smaller one
   (`merge_ratio`), or, for neighbours of similar size (a lumpy or border-cut particle
   split in halves), somewhat narrower (`similar_merge_ratio`), so lumpy outlines do
   not shatter a particle;
6. a filled hole shared by several particles is a matrix pocket between them, not a
   pore, and is given back to the matrix;
7. labels are upsampled (nearest) and the boundary band is redrawn at full resolution
   from the threshold mask; small (`min_diameter_um`) and, optionally, border-touching
   particles are dropped; labels are renumbered 1..N.

Lengths are in µm; when an image has no pixel size, the ``px`` block (full-resolution
pixels, defaults sized for about 0.05 µm/px) is used instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_li, threshold_otsu, threshold_triangle
from skimage.morphology import disk, h_maxima
from skimage.segmentation import expand_labels, find_boundaries, relabel_sequential, watershed

from fracscope.detect.base import Detector
from fracscope.settings import settings_from_config
from fracscope.types import SEMImage

_THRESHOLDS = {"otsu": threshold_otsu, "li": threshold_li, "triangle": threshold_triangle}


@dataclass(frozen=True)
class PixelFallback:
    """Detector lengths in full-resolution pixels, used when the pixel size is unknown."""

    downsample: int = 2
    smooth_px: float = 2.4
    opening_radius_px: float = 5.0
    closing_radius_px: float = 5.0
    seed_h_px: float = 1.0
    similar_min_peak_px: float = 10.0
    max_hole_diameter_px: float = 80.0
    min_diameter_px: float = 30.0
    mirror_px: float = 160.0


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of `ClassicalDetector` (lengths in µm).

    working_pixel_size_um: detection runs on a block-mean downsample to about this
        pixel size (never upsampled).
    smooth_um: Gaussian sigma before thresholding.
    threshold: "otsu", "li" or "triangle".
    threshold_offset: added to the threshold, in units of the normalised [0, 1] range
        (negative keeps darker particle rims).
    opening_radius_um: removes bright specks and thin bright bridges in the matrix.
    closing_radius_um: bridges cracks and grain-boundary gaps up to ~2x this width.
    seed_h_um: h of the h-maxima seeds on the distance transform.
    merge_ratio: neighbours are merged when the distance-transform value at their
        shared boundary exceeds this fraction of the smaller one's peak (0 disables
        splitting; > 1 disables merging).
    similar_merge_ratio: lower merge ratio for neighbours of similar size (smaller peak
        >= `similar_peak_ratio` x larger peak, and >= `similar_min_peak_um`): two halves
        of one lumpy particle have similar peaks and a fairly wide neck, whereas a
        satellite touching a large particle does not qualify.
    similar_peak_ratio: see `similar_merge_ratio`.
    similar_min_peak_um: see `similar_merge_ratio` (keeps specks out of the rule).
    max_hole_diameter_um: holes up to this equivalent diameter are filled as pores.
    min_diameter_um: particles with a smaller area-equivalent diameter are dropped.
    exclude_border: drop particles that touch the image border.
    mirror_um: the mask is mirrored this far across the image border for the distance
        transform, so particles cut by one border split like the others (0 = off).
    px: the same lengths in pixels for images without a pixel size.
    """

    working_pixel_size_um: float = 0.12
    smooth_um: float = 0.12
    threshold: str = "otsu"
    threshold_offset: float = 0.0
    opening_radius_um: float = 0.25
    closing_radius_um: float = 0.25
    seed_h_um: float = 0.05
    merge_ratio: float = 0.94
    similar_merge_ratio: float = 0.78
    similar_peak_ratio: float = 0.8
    similar_min_peak_um: float = 0.5
    max_hole_diameter_um: float = 4.0
    min_diameter_um: float = 1.5
    exclude_border: bool = False
    mirror_um: float = 8.0
    px: PixelFallback = field(default_factory=PixelFallback)


@dataclass(frozen=True)
class _MergeRule:
    """When two watershed regions are one particle (peaks and necks in working pixels)."""

    ratio: float
    similar_ratio: float
    similar_peak_ratio: float
    similar_min_peak: float

    def merges(self, neck: float, peak_a: float, peak_b: float) -> bool:
        """True when the neck between regions with these distance-transform peaks is wide."""
        lo, hi = min(peak_a, peak_b), max(peak_a, peak_b)
        if neck > self.ratio * lo:
            return True
        similar = lo >= self.similar_peak_ratio * hi and lo >= self.similar_min_peak
        return similar and neck > self.similar_ratio * lo


@dataclass(frozen=True)
class _Working:
    """Settings resolved to working pixels for one image."""

    factor: int
    sigma: float
    opening: float
    closing: float
    seed_h: float
    max_hole_area: float
    min_area_full: float
    mirror: int
    merge: _MergeRule


def _resolve(p: ClassicalParams, pixel_size_um: float | None) -> _Working:
    if pixel_size_um is None or not pixel_size_um > 0:
        f = max(1, int(p.px.downsample))
        return _Working(
            factor=f,
            sigma=p.px.smooth_px / f,
            opening=p.px.opening_radius_px / f,
            closing=p.px.closing_radius_px / f,
            seed_h=p.px.seed_h_px / f,
            max_hole_area=math.pi * (p.px.max_hole_diameter_px / f / 2) ** 2,
            min_area_full=math.pi * (p.px.min_diameter_px / 2) ** 2,
            mirror=int(round(p.px.mirror_px / f)),
            merge=_MergeRule(p.merge_ratio, p.similar_merge_ratio, p.similar_peak_ratio, p.px.similar_min_peak_px / f),
        )
    f = max(1, int(round(p.working_pixel_size_um / pixel_size_um)))
    w = pixel_size_um * f  # working pixel size, µm
    return _Working(
        factor=f,
        sigma=p.smooth_um / w,
        opening=p.opening_radius_um / w,
        closing=p.closing_radius_um / w,
        seed_h=p.seed_h_um / w,
        max_hole_area=math.pi * (p.max_hole_diameter_um / w / 2) ** 2,
        min_area_full=math.pi * (p.min_diameter_um / pixel_size_um / 2) ** 2,
        mirror=int(round(p.mirror_um / w)),
        merge=_MergeRule(p.merge_ratio, p.similar_merge_ratio, p.similar_peak_ratio, p.similar_min_peak_um / w),
    )


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    h, w = img.shape
    hh, ww = -(-h // f) * f, -(-w // f) * f
    # Edge-pad to a multiple of f so the last block is not darkened.
    padded = np.pad(img, ((0, hh - h), (0, ww - w)), mode="edge")
    return padded.reshape(hh // f, f, ww // f, f).mean(axis=(1, 3), dtype=np.float32)


def _upsample(labels: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    if f == 1:
        return labels
    return np.repeat(np.repeat(labels, f, axis=0), f, axis=1)[: shape[0], : shape[1]]


def _disk(radius: float) -> np.ndarray | None:
    r = int(round(radius))
    return disk(r) if r >= 1 else None


def _edt_mirrored(mask: np.ndarray, pad: int) -> np.ndarray:
    """Distance transform with the mask mirrored across the image border.

    Plain EDT counts the outside of the image as foreground, so two particles cut by the
    same border meet in a ridge of high values there and merge; mirroring keeps the
    concavity between them, as if the image went on.
    """
    if pad <= 0:
        return ndi.distance_transform_edt(mask).astype(np.float32)
    pad = min(pad, *mask.shape)
    padded = np.pad(mask, pad, mode="symmetric")
    return ndi.distance_transform_edt(padded)[pad:-pad, pad:-pad].astype(np.float32)


def _merge_wide_necks(labels: np.ndarray, edt: np.ndarray, rule: _MergeRule) -> np.ndarray:
    """Merge adjacent regions whose shared boundary is not a narrow neck.

    For regions a, b the neck height is the largest min(edt) over 4-neighbour pixel pairs
    across their boundary; `rule` decides from it and the two region peaks.
    Pairs are processed from the highest neck down (as in a merge tree), with peaks updated.
    """
    n = int(labels.max())
    if n < 2:
        return labels
    peak = np.zeros(n + 1, dtype=np.float64)
    np.maximum.at(peak, labels.ravel(), edt.ravel())
    a_parts, b_parts, h_parts = [], [], []
    for la, lb, ea, eb in (
        (labels[:, :-1], labels[:, 1:], edt[:, :-1], edt[:, 1:]),
        (labels[:-1, :], labels[1:, :], edt[:-1, :], edt[1:, :]),
    ):
        m = (la != lb) & (la > 0) & (lb > 0)
        a_parts.append(np.minimum(la[m], lb[m]))
        b_parts.append(np.maximum(la[m], lb[m]))
        h_parts.append(np.minimum(ea[m], eb[m]))
    a = np.concatenate(a_parts).astype(np.int64)
    b = np.concatenate(b_parts).astype(np.int64)
    h = np.concatenate(h_parts).astype(np.float64)
    if a.size == 0:
        return labels
    code = a * (n + 1) + b
    order = np.lexsort((-h, code))
    code, h = code[order], h[order]
    first = np.r_[True, code[1:] != code[:-1]]
    code, h = code[first], h[first]  # max neck per pair
    parent = np.arange(n + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for c, neck in sorted(zip(code.tolist(), h.tolist(), strict=True), key=lambda t: -t[1]):
        ra, rb = root(c // (n + 1)), root(c % (n + 1))
        if ra == rb:
            continue
        if rule.merges(neck, peak[ra], peak[rb]):
            parent[rb] = ra
            peak[ra] = max(peak[ra], peak[rb])
    lut = np.array([root(i) for i in range(n + 1)])
    return lut[labels]


def _drop_shared_holes(labels: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Give back to the matrix every filled hole that the watershed split between particles."""
    hole_lab, n = ndi.label(holes)
    if n == 0:
        return labels
    m = hole_lab > 0
    pairs = np.unique(np.stack([hole_lab[m], labels[m]]), axis=1)
    pairs = pairs[:, pairs[1] > 0]
    n_owners = np.bincount(pairs[0], minlength=n + 1)
    shared = n_owners[hole_lab] > 1
    out = labels.copy()
    out[shared] = 0
    return out


class ClassicalDetector(Detector):
    """Threshold + morphology + distance-transform watershed detector.

    Parameters
    ----------
    params : ClassicalParams, optional
        All settings; or give them as keyword arguments (as Hydra does from
        ``conf/detect/classical.yaml``), with ``px`` as a mapping.
    """

    name = "classical"
    settings_type = ClassicalParams  # what **settings are (see `fracscope.detect.base.detector_factory`)

    def __init__(self, params: ClassicalParams | None = None, **settings: Any) -> None:
        if params is None:
            params = settings_from_config(ClassicalParams, settings, "the classical detector settings")
        elif settings:
            params = replace(params, **settings)
        if params.threshold not in _THRESHOLDS:
            raise ValueError(f"threshold must be one of {sorted(_THRESHOLDS)}, got {params.threshold!r}")
        self.params = params
        self.min_diameter_um = params.min_diameter_um or None

    def detect(self, image: SEMImage) -> np.ndarray:
        """Instance label map (uint32, 0 = matrix, particles 1..N) of `image`."""
        full = np.asarray(image.pixels, dtype=np.float32)
        if full.ndim != 2:
            raise ValueError(f"expected a 2-D grey image, got shape {full.shape}")
        p = self.params
        w = _resolve(p, image.pixel_size_um)
        small = _block_mean(full, w.factor)
        lo, hi = np.percentile(small, (0.5, 99.5))
        if not hi > lo:
            return np.zeros(full.shape, dtype=np.uint32)
        scale = 1.0 / (hi - lo)

        def normalise(a: np.ndarray) -> np.ndarray:
            return np.clip((a - lo) * scale, 0.0, 1.0)

        sm = ndi.gaussian_filter(normalise(small), w.sigma) if w.sigma > 0.3 else normalise(small)
        t = float(_THRESHOLDS[p.threshold](sm)) + p.threshold_offset
        fg = sm > t
        if (se := _disk(w.closing)) is not None:
            # Pad so closing does not glue particles to the image border.
            r = se.shape[0]
            fg = ndi.binary_closing(np.pad(fg, r, mode="edge"), se)[r:-r, r:-r]
        if (se := _disk(w.opening)) is not None:
            # After closing, so porous grains are first joined into bodies, then specks go.
            fg = ndi.binary_opening(fg, se)
        filled = ndi.binary_fill_holes(fg)
        holes = filled & ~fg
        hole_lab, n_holes = ndi.label(holes)
        if n_holes:
            big = np.bincount(hole_lab.ravel())[hole_lab] > w.max_hole_area
            filled &= ~(big & (hole_lab > 0))
            holes &= ~big
        labels_w = self._split(filled, w)
        labels_w = _drop_shared_holes(labels_w, holes)
        labels = self._refine(full, labels_w, normalise, t, w)
        return self._finish(labels, w)

    def _split(self, mask: np.ndarray, w: _Working) -> np.ndarray:
        edt = _edt_mirrored(mask, w.mirror)
        if self.params.merge_ratio <= 0:
            return ndi.label(mask)[0]
        markers = ndi.label(h_maxima(edt, w.seed_h) if w.seed_h > 0 else mask)[0]
        labels = watershed(-edt, markers, mask=mask)
        return _merge_wide_necks(labels, edt, w.merge)

    def _refine(self, full: np.ndarray, labels_w: np.ndarray, normalise: Any, t: float, w: _Working) -> np.ndarray:
        """Redraw the boundary band (about ±1.5 working pixels) from the full-resolution threshold."""
        if w.factor == 1:
            return labels_w
        grown = expand_labels(labels_w, distance=2)
        band_w = ndi.binary_dilation(find_boundaries(labels_w, mode="thick"))
        up = _upsample(labels_w, w.factor, full.shape)
        up_grown = _upsample(grown, w.factor, full.shape)
        band = _upsample(band_w, w.factor, full.shape)
        rows, cols = np.nonzero(band)
        # Light smoothing at full resolution: the threshold came from a block-mean image.
        r0, r1, c0, c1 = rows.min(initial=0), rows.max(initial=0) + 1, cols.min(initial=0), cols.max(initial=0) + 1
        sm = ndi.gaussian_filter(normalise(full[r0:r1, c0:c1]), 0.5 * w.factor)
        out = up.copy()
        fg = sm[rows - r0, cols - c0] > t
        out[rows, cols] = np.where(fg, up_grown[rows, cols], 0)
        # Dark pores cut in the band become small holes: fill those wholly inside the band.
        holes = ndi.binary_fill_holes(out > 0) & (out == 0)
        hole_lab, n = ndi.label(holes)
        if n:
            outside = np.bincount(hole_lab[~band].ravel(), minlength=n + 1) > 0
            fill = (hole_lab > 0) & ~outside[hole_lab]
            out[fill] = up_grown[fill]
        return out

    def _finish(self, labels: np.ndarray, w: _Working) -> np.ndarray:
        labels = labels.astype(np.int64, copy=False)
        area = np.bincount(labels.ravel())
        drop = area < w.min_area_full
        if self.params.exclude_border:
            edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
            drop[np.unique(edge)] = True
        drop[0] = True
        labels = np.where(drop[labels], 0, labels)
        return relabel_sequential(labels)[0].astype(np.uint32)
