"""Instance → fixed-size particle crop, shared by training and inference.

Geometry (all coordinates in source-image pixels, integer pixel indices):

- The particle's bounding box is ``(r0, c0, r1, c1)``, end-exclusive, as given by
  ``scipy.ndimage.find_objects``; ``h = r1 - r0``, ``w = c1 - c0``.
- The crop *window* is the square of side
  ``side = max(1, ceil(max(h, w) * (1 + 2 * margin)))`` whose centre is the box
  centre: ``wr0 = floor((r0 + r1 - side) / 2 + 0.5)`` (same for columns). It is
  ``ParticleCrop.bbox = (wr0, wc0, wr0 + side, wc0 + side)`` and may extend past
  the image. Outside the image the intensity is mirrored (symmetric reflection);
  the mask and phases are 0 there (no particle, matrix).
- The window is resized to ``size × size``; ``ParticleCrop.scale = size / side``
  crop pixels per source pixel. Resampling is pixel-centre aligned (OpenCV): crop
  pixel ``j`` has its centre at window coordinate ``(j + 0.5) / scale - 0.5``, i.e.
  at source pixel coordinate ``wr0 + (j + 0.5) / scale - 0.5``.
- Phase maps are resampled nearest-neighbour, except that a shrinking resize marks
  every crop pixel whose footprint holds any crack pixel as crack: cracks are often
  one source pixel wide, and point sampling would break them into dashes, turning a
  broken particle's true topology into a mildly damaged one (see `resize_phases`).
- `paste_back` inverts the resize: it maps a (C, size, size) map onto the
  window's source grid and returns any requested region of it (usually the
  particle's own box, or `clip_window` for the window inside the image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from fracscope.types import ParticleCrop, Phase

Box = tuple[int, int, int, int]

# The one place the crop defaults are written (training config, checkpoints and model files
# carry the values actually used).
NORM_PERCENTILES: tuple[float, float] = (0.5, 99.5)
NORMALISATION_METHOD = "percentile"


@dataclass(frozen=True)
class CropSpec:
    """How a particle becomes a network input, the same in training and at inference.

    size: crop side in pixels. margin: context per side as a fraction of the particle
    box's longer side. low_pct, high_pct: percentiles of the crop window (before
    resizing) that map to 0 and 1 (`normalize_intensity`).

    It travels whole: data module → checkpoint hyperparameters → model file metadata
    (``crop_size``, ``margin``, ``normalisation``; `to_fields` / `from_fields`) → inference.
    """

    size: int = 128
    margin: float = 0.15
    low_pct: float = NORM_PERCENTILES[0]
    high_pct: float = NORM_PERCENTILES[1]

    def __post_init__(self) -> None:
        if int(self.size) < 1:
            raise ValueError(f"crop size must be positive, got {self.size}")
        if not float(self.margin) >= 0:
            raise ValueError(f"crop margin must be >= 0, got {self.margin}")
        if not 0.0 <= float(self.low_pct) < float(self.high_pct) <= 100.0:
            raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {self.low_pct}, {self.high_pct}")

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """The window's intensities scaled to [0, 1] by this spec's percentiles."""
        return normalize_intensity(pixels, float(self.low_pct), float(self.high_pct))

    def to_fields(self) -> dict[str, Any]:
        """The fields a checkpoint and a model file store: crop_size, margin, normalisation."""
        return {
            "crop_size": int(self.size),
            "margin": float(self.margin),
            "normalisation": {"method": NORMALISATION_METHOD, "low_pct": float(self.low_pct),
                              "high_pct": float(self.high_pct),
                              "over": "crop window, before resizing (fracscope.crop.normalize_intensity)"},
        }

    @classmethod
    def from_fields(cls, crop_size: int, margin: float, normalisation: Mapping[str, Any]) -> CropSpec:
        """Inverse of `to_fields`; percentiles missing from `normalisation` keep the defaults.

        Raises
        ------
        ValueError
            When the normalisation method is not the percentile scaling this module applies.
        """
        norm = dict(normalisation)
        method = norm.get("method", NORMALISATION_METHOD)
        if method != NORMALISATION_METHOD:
            raise ValueError(f"unknown normalisation method {method!r}; expected {NORMALISATION_METHOD!r}")
        return cls(size=int(crop_size), margin=float(margin),
                   low_pct=float(norm.get("low_pct", cls.low_pct)), high_pct=float(norm.get("high_pct", cls.high_pct)))


DEFAULT_CROP_SPEC = CropSpec()


def strided_sample(pixels: np.ndarray, max_samples: int) -> np.ndarray:
    """Every k-th row and column of a 2-D image (a view), k the smallest stride that leaves at most
    `max_samples` pixels; the image itself when it has no more.

    Grey-level statistics of a large image (percentiles, histograms) are taken on it: a full sort of a
    3 Mpx field costs ~0.15 s. The same image always gives the same sample.
    """
    values = np.asarray(pixels)
    if values.ndim != 2:
        raise ValueError(f"strided_sample takes a 2-D image, got shape {values.shape}")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    rows, cols = values.shape
    # ceil(sqrt(size / max_samples)) is the smallest stride that can do; the rounding up at the
    # bottom and right edges may need one or two more
    stride = max(1, math.ceil(math.sqrt(values.size / max_samples)))
    while -(-rows // stride) * -(-cols // stride) > max_samples:
        stride += 1
    return values if stride == 1 else values[::stride, ::stride]


def intensity_range(pixels: np.ndarray, low_pct: float = NORM_PERCENTILES[0], high_pct: float = NORM_PERCENTILES[1],
                    max_samples: int | None = None) -> tuple[float, float]:
    """The grey levels (lo, hi) that `normalize_intensity` maps to 0 and 1: the `low_pct` and `high_pct`
    percentiles of `pixels` (of its `strided_sample` with `max_samples`)."""
    arr = np.asarray(pixels)
    sample = arr if max_samples is None else strided_sample(arr, max_samples)
    if sample.dtype in (np.uint8, np.uint16) and sample.size:
        lo, hi = _histogram_percentiles(sample, (low_pct, high_pct))
    else:
        lo, hi = np.percentile(np.asarray(sample, dtype=np.float32), (low_pct, high_pct))
    return float(lo), float(hi)


def _histogram_percentiles(values: np.ndarray, percents: tuple[float, ...]) -> list[float]:
    """`np.percentile`'s linear percentiles of 8- or 16-bit integers, read off their histogram: the same order
    statistics without the sort (a 3 Mpx field: ~5 ms instead of ~60 ms)."""
    cumulative = np.cumsum(np.bincount(values.ravel()))
    n = int(cumulative[-1])
    out = []
    for q in percents:
        position = float(q) / 100.0 * (n - 1)
        below = math.floor(position)
        # the k-th smallest value (0-based) is the first grey level whose cumulative count exceeds k
        a, b = (float(np.searchsorted(cumulative, k, side="right")) for k in (below, min(below + 1, n - 1)))
        t = position - below  # numpy's interpolation, term for term, so the result is bit-identical
        out.append(b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t)
    return out


def scale_intensity(pixels: np.ndarray, grey_range: tuple[float, float]) -> np.ndarray:
    """float32 `pixels` mapped linearly from `grey_range` (`intensity_range`) to [0, 1], clipped; all zeros
    when the range is empty. A box of an image scaled so equals the same box of the whole image scaled."""
    arr = np.asarray(pixels, dtype=np.float32)
    lo, hi = grey_range
    span = float(hi) - float(lo)
    if not span > 0:
        return np.zeros(arr.shape, dtype=np.float32)
    out = (arr - np.float32(lo)) * np.float32(1.0 / span)
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_intensity(pixels: np.ndarray, low_pct: float = NORM_PERCENTILES[0],
                        high_pct: float = NORM_PERCENTILES[1], max_samples: int | None = None) -> np.ndarray:
    """Robust percentile scaling to [0, 1], as float32.

    Values at or below the `low_pct` percentile map to 0, at or above `high_pct`
    to 1, linearly in between. A constant input (no spread between the
    percentiles) maps to all zeros instead of dividing by zero. With `max_samples`, an image
    with more pixels takes its percentiles from its `strided_sample` (bounded cost).
    """
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.size == 0:
        return arr
    return scale_intensity(arr, intensity_range(arr, low_pct, high_pct, max_samples))


def _as_box(bbox) -> Box:
    """(r0, c0, r1, c1) from a find_objects slice pair or a 4-tuple."""
    if len(bbox) == 2 and all(isinstance(s, slice) for s in bbox):
        return int(bbox[0].start), int(bbox[1].start), int(bbox[0].stop), int(bbox[1].stop)
    r0, c0, r1, c1 = (int(v) for v in bbox)
    return r0, c0, r1, c1


def crop_window(box: Box, margin: float) -> Box:
    """The square crop window (see the module docstring) around a particle box."""
    r0, c0, r1, c1 = box
    side = max(1, math.ceil(max(r1 - r0, c1 - c0) * (1.0 + 2.0 * margin) - 1e-9))
    wr0 = math.floor((r0 + r1 - side) / 2.0 + 0.5)
    wc0 = math.floor((c0 + c1 - side) / 2.0 + 0.5)
    return wr0, wc0, wr0 + side, wc0 + side


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Symmetric reflection of indices into [0, n): ... 1 0 | 0 1 … n-1 | n-1 n-2 ..."""
    period = 2 * n
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - 1 - idx, idx)


def _take_window(arr: np.ndarray, window: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The window of a 2-D array, reflected outside, plus the in-image row/col masks."""
    wr0, wc0, wr1, wc1 = window
    rows, cols = np.arange(wr0, wr1), np.arange(wc0, wc1)
    h, w = arr.shape
    inside_r = (rows >= 0) & (rows < h)
    inside_c = (cols >= 0) & (cols < w)
    if inside_r.all() and inside_c.all():  # common case: a plain view
        return arr[wr0:wr1, wc0:wc1], inside_r, inside_c
    return arr[np.ix_(_reflect_index(rows, h), _reflect_index(cols, w))], inside_r, inside_c


def _resize(arr: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    side = arr.shape[0]
    if side == size:
        return np.ascontiguousarray(arr)
    if nearest:
        # NEAREST_EXACT samples at pixel centres, like LINEAR/AREA; plain NEAREST is offset.
        interp = cv2.INTER_NEAREST_EXACT
    else:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(arr), (size, size), interpolation=interp)


def resize_phases(phases: np.ndarray, size: int) -> np.ndarray:
    """Resize a square uint8 phase map to ``size × size``, keeping cracks connected (`resize_phase_map`)."""
    return resize_phase_map(phases, (size, size))


def resize_phase_map(phases: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 phase map to `shape` (rows, cols), keeping cracks connected.

    Nearest-neighbour sampling, except when shrinking: a foreground pixel whose
    footprint (the INTER_AREA support) holds any crack pixel becomes crack. A crack
    path that separates the section at the source resolution then still separates it
    after the resize, so the phases agree with the particle's damage class. The
    price is that thin cracks cover more pixels than their true area.
    """
    phases = np.ascontiguousarray(phases)
    h, w = int(shape[0]), int(shape[1])
    if phases.shape == (h, w):
        return phases.copy()
    # NEAREST_EXACT samples at pixel centres, like LINEAR/AREA; plain NEAREST is offset.
    out = cv2.resize(phases, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    if phases.shape[0] <= h and phases.shape[1] <= w:
        return out
    crack = (phases == Phase.CRACK).astype(np.float32)
    # INTER_AREA weights are non-negative, so a footprint without crack sums to exactly 0.
    crack_any = cv2.resize(crack, (w, h), interpolation=cv2.INTER_AREA) > 0
    out[crack_any & (out > 0)] = Phase.CRACK
    return out


def crop_particle(
    pixels: np.ndarray,
    instances: np.ndarray,
    particle_id: int,
    spec: CropSpec = DEFAULT_CROP_SPEC,
    phases: np.ndarray | None = None,
    bbox=None,
) -> ParticleCrop:
    """One particle centred in a fixed-size, normalised square crop.

    Parameters
    ----------
    pixels : ndarray, shape (H, W)
        The SEM image (uint8, uint16 or float).
    instances : ndarray of uint32, shape (H, W)
        Instance label map.
    particle_id : int
        Label of the particle.
    spec : CropSpec
        Crop side, margin and normalisation percentiles.
    phases : ndarray of uint8, shape (H, W), optional
        Phase map to crop alongside (`resize_phases`: nearest-neighbour, cracks kept
        connected).
    bbox : tuple, optional
        The particle's box: a `find_objects` slice pair or (r0, c0, r1, c1).
        Pass it to avoid an O(image) search for the particle.

    Returns
    -------
    ParticleCrop
        image normalised by `spec`'s percentiles over the window (before resizing); mask
        of this particle only (touching neighbours are 0); scale = size / side;
        bbox = the window in source coordinates (see module docstring).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.shape != instances.shape:
        raise ValueError(f"pixels {pixels.shape} and instances {instances.shape} must be the same 2-D shape")
    if bbox is None:
        hits = np.argwhere(instances == particle_id)
        if hits.size == 0:
            raise ValueError(f"particle {particle_id} is not in the instance map")
        (r0, c0), (r1, c1) = hits.min(0), hits.max(0) + 1
        box = (int(r0), int(c0), int(r1), int(c1))
    else:
        box = _as_box(bbox)
    size = int(spec.size)
    window = crop_window(box, spec.margin)
    img, inside_r, inside_c = _take_window(pixels, window)
    inside = inside_r[:, None] & inside_c[None, :]
    lab, _, _ = _take_window(instances, window)
    own = ((lab == particle_id) & inside).astype(np.uint8)
    image = _resize(spec.normalise(img), size, nearest=False).astype(np.float32, copy=False)
    mask = _resize(own, size, nearest=True).astype(np.float32)
    phase_crop = None
    if phases is not None:
        ph, _, _ = _take_window(np.asarray(phases, dtype=np.uint8), window)
        phase_crop = resize_phases(np.where(inside, ph, 0).astype(np.uint8), size)
    return ParticleCrop(
        image=image,
        mask=mask,
        phases=phase_crop,
        particle_id=int(particle_id),
        scale=size / (window[2] - window[0]),
        bbox=window,
    )


def crop_particles(
    pixels: np.ndarray,
    instances: np.ndarray,
    spec: CropSpec = DEFAULT_CROP_SPEC,
    phases: np.ndarray | None = None,
    ids=None,
) -> list[ParticleCrop]:
    """Crops of all (or the listed) particles of an image, with one `find_objects` pass.

    Parameters
    ----------
    ids : iterable of int, optional
        Particles to crop, in this order; default every label present, ascending.

    Raises
    ------
    ValueError
        When a requested id is not in the instance map.
    """
    boxes = ndi.find_objects(np.asarray(instances))
    if ids is None:
        ids = [i + 1 for i, b in enumerate(boxes) if b is not None]
    crops = []
    for pid in ids:
        pid = int(pid)
        box = boxes[pid - 1] if 0 < pid <= len(boxes) else None
        if box is None:
            raise ValueError(f"particle {pid} is not in the instance map")
        crops.append(crop_particle(pixels, instances, pid, spec, phases, bbox=box))
    return crops


def clip_window(crop: ParticleCrop, image_shape: tuple[int, int]) -> Box:
    """The crop window clipped to an image of `image_shape`: a region for `paste_back`."""
    wr0, wc0, wr1, wc1 = crop.bbox
    height, width = image_shape
    r0, c0 = min(max(wr0, 0), height), min(max(wc0, 0), width)
    return r0, c0, max(min(wr1, height), r0), max(min(wc1, width), c0)


def paste_back(crop_map: np.ndarray, crop: ParticleCrop, region) -> np.ndarray:
    """Map a crop-resolution map back onto a region of the source pixel grid.

    The map is resampled to the window side with pixel-centre alignment (bilinear
    when the window is larger than the crop, area averaging when smaller), and the
    requested region is cut out of it. Cost is O(window), not O(image).

    Parameters
    ----------
    crop_map : ndarray, shape (C, S, S) or (S, S)
        E.g. phase probabilities predicted on the crop.
    crop : ParticleCrop
        The crop the map belongs to (its `bbox` is the window).
    region : tuple of int
        (row0, col0, row1, col1), end-exclusive, in source-image coordinates:
        typically the particle's own bounding box, or `clip_window(crop, shape)`
        for the whole window inside the image. Parts outside the window are 0.

    Returns
    -------
    ndarray of float32, shape (C, row1 - row0, col1 - col0) (or 2-D for a 2-D map)
        ``out[:, i, j]`` is the map at source pixel ``(row0 + i, col0 + j)``.
    """
    arr = np.asarray(crop_map, dtype=np.float32)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"crop_map must be (C, S, S) or (S, S), got {np.shape(crop_map)}")
    wr0, wc0, wr1, wc1 = crop.bbox
    side = wr1 - wr0
    hwc = np.ascontiguousarray(arr.transpose(1, 2, 0))
    if side != arr.shape[1]:
        interp = cv2.INTER_LINEAR if side > arr.shape[1] else cv2.INTER_AREA
        # cv2 handles up to 512 channels; class/phase maps have a handful.
        hwc = cv2.resize(hwc, (side, side), interpolation=interp)
        if hwc.ndim == 2:
            hwc = hwc[:, :, None]
    full = hwc.transpose(2, 0, 1)
    r0, c0, r1, c1 = _as_box(region)
    if r1 < r0 or c1 < c0:
        raise ValueError(f"region {region} is not (row0, col0, row1, col1) with row1 >= row0, col1 >= col0")
    out = np.zeros((arr.shape[0], r1 - r0, c1 - c0), dtype=np.float32)
    # Overlap of region and window, in source coordinates.
    or0, oc0, or1, oc1 = max(r0, wr0), max(c0, wc0), min(r1, wr1), min(c1, wc1)
    if or1 > or0 and oc1 > oc0:
        out[:, or0 - r0 : or1 - r0, oc0 - c0 : oc1 - c0] = full[:, or0 - wr0 : or1 - wr0, oc0 - wc0 : oc1 - wc0]
    return out[0] if squeeze else out
