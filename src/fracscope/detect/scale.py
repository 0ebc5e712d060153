"""Scale estimation: the pixel size of an image that carries none, from the image itself.

When neither the file's tags, a ``pixel_size_um=`` override nor the SEM scale bar give a pixel
size, the learned detector is run on the image at a log grid of candidate pixel sizes, each on a
window of at most `WINDOW_PX` working pixels (a shrunk copy, so every pass is cheap); candidates at
which the whole image would span less than one typical section are not tried, and a candidate at
which one object fills most of the window (the image shrunk to one blob) counts as finding nothing. Over a wide
range around the true pixel size (about 0.5x to 1.4x) the detector finds the same particles;
their size in image pixels is then fixed, and their size in µm scales with the candidate. The
estimate is the candidate at which the detected sections' area-weighted mean equivalent diameter
(a section cut by the window's edge: the diameter of the disc that, cut by the edge the same way,
best covers what is visible of it) equals `REFERENCE_DIAMETER_UM`, the typical section of a
cathode electrode: the crossing of log(diameter / reference) from below to above zero,
interpolated on the log grid. Far below the
truth the detector finds crumbs (smaller than the reference); far above, it splits particles into
grain-sized pieces that are still larger in µm than the reference at those scales; so the
crossing sits at the truth. Where the diameter crosses the reference more than once, the crossing
whose nearest candidate has the highest plausibility (share of the window covered by confident
2-20 µm objects) wins.

The estimate rests on a size prior: an electrode whose sections are on average 20 % larger than
the reference is estimated 20 % too coarse. Lengths from an estimated scale are therefore
reported in pixels (``length_unit=px``), and the estimate is recorded beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fracscope.detect.postprocess import labels_from_maps, object_scores

# The learned detector (`fracscope.detect.learned.LearnedDetector`, which calls this module): anything
# with its `predict_maps(pixels, pixel_size_um)` and `params`.
LearnedDetector = Any

# Area-weighted mean equivalent diameter of the sections of a calendered electrode (secondary
# particles of d50 ~ 11 µm, cut at random heights, 40 % fines). Calibrated on generated fields of
# tuning seeds 101-103 (bench/scale_estimation.py scores seeds 201+); remeasured there in session 15
# with the cut-section disc fit: median error +4.5 % at 0.01 µm/px, −2.5 to −7.5 % at 0.02-0.2. The
# generator's 24 µm fields (0.01 µm/px) hold smaller sections (area-weighted ~10.1 µm) than its 80 µm
# ones (~11.4 µm); real electrodes vary by their d50, and the estimate with them.
REFERENCE_DIAMETER_UM = 10.7
# Candidate pixel sizes: 25 on a log grid, a factor of ~1.21 apart.
CANDIDATES_UM: tuple[float, ...] = tuple(float(v) for v in np.geomspace(0.004, 0.4, 25))
# Each pass sees at most this many working pixels a side (a centred window of the image).
WINDOW_PX = 512
# Objects with a smaller equivalent diameter at a candidate are specks, not sections.
MIN_OBJECT_DIAMETER_UM = 1.5
# "Plausible" secondary-particle sections for choosing between crossings.
PLAUSIBLE_DIAMETER_UM = (2.0, 20.0)
# A candidate at which the whole image spans fewer than this many reference diameters is skipped.
MIN_FIELD_DIAMETERS = 1.0
# A candidate at which one object covers more than this share of the window says nothing: shrunk
# that far, the image is one blob that fills the window (not a particle).
MAX_OBJECT_SHARE = 0.5
# A cut section's fitted circle may make it at most this much larger than its visible area says
# (a quarter disc in a window corner: 2x; a cap cut off by one edge: more). 3x, not 2x: at
# 0.01 µm/px (tuning seeds) a third of the cut sections' fits were clipped at 2x, and the
# estimate fell from +7.2 % to +4.5 % (median) with 3x; 4x changed nothing more.
MAX_CUT_GROWTH = 3.0
# A cut section's disc is fitted on at most about this many pixels, in at most this many steps.
FIT_PIXELS = 4000
FIT_MAX_STEPS = 50


@dataclass(frozen=True)
class ScaleCandidate:
    """What the detector found at one candidate pixel size.

    pixel_size_um: the candidate.
    n_objects: objects detected in the window.
    mean_score: their mean foreground probability (0 when none).
    diameter_um: their area-weighted mean equivalent diameter at this candidate, a section cut by the
        window's edge taken at the diameter of the circle fitted to its outline (0 when none).
    plausibility: share of the window covered by 2-20 µm objects, times their mean score.
    """

    pixel_size_um: float
    n_objects: int
    mean_score: float
    diameter_um: float
    plausibility: float


@dataclass(frozen=True)
class ScaleEstimate:
    """An estimated pixel size, how plausible the detections at it are, and every candidate."""

    pixel_size_um: float
    score: float
    candidates: tuple[ScaleCandidate, ...]


def summarise_objects(
    pixel_size_um: float,
    diameters_um: np.ndarray,
    areas_px: np.ndarray,
    scores: np.ndarray,
    window_px: int,
) -> ScaleCandidate:
    """One candidate's summary from its objects (diameters at the candidate, a cut section's from its
    fitted circle; visible areas in working pixels; mean foreground scores) and the window's pixel count."""
    d, a, s = np.asarray(diameters_um, float), np.asarray(areas_px, float), np.asarray(scores, float)
    keep = d >= MIN_OBJECT_DIAMETER_UM
    if not keep.any() or a.max() > MAX_OBJECT_SHARE * window_px:
        return ScaleCandidate(pixel_size_um, 0, 0.0, 0.0, 0.0)
    diameter = float((d[keep] * a[keep]).sum() / a[keep].sum())
    plausible = keep & (d >= PLAUSIBLE_DIAMETER_UM[0]) & (d <= PLAUSIBLE_DIAMETER_UM[1])
    coverage = float(a[plausible].sum() / max(window_px, 1))
    score = float(s[plausible].mean()) if plausible.any() else 0.0
    return ScaleCandidate(pixel_size_um, int(keep.sum()), float(s[keep].mean()), diameter, coverage * score)


def outline_circle_px(mask: np.ndarray) -> tuple[float, float, float] | None:
    """Circle (row, column, radius) fitted (least squares, Kasa) to the outline of `mask` away from
    the window's edge; None when too little outline is left."""
    from scipy import ndimage as ndi

    outline = mask & ~ndi.binary_erosion(mask)
    outline[[0, -1], :] = False
    outline[:, [0, -1]] = False
    rows, cols = np.nonzero(outline)
    if rows.size < 12:
        return None
    y, x = rows - rows.mean(), cols - cols.mean()
    design = np.column_stack([2 * x, 2 * y, np.ones_like(x)])
    (cx, cy, k), *_ = np.linalg.lstsq(design, x**2 + y**2, rcond=None)
    r2 = k + cx**2 + cy**2
    return (float(cy + rows.mean()), float(cx + cols.mean()), math.sqrt(r2)) if r2 > 0 else None


def fitted_circle_diameter_px(mask: np.ndarray) -> float:
    """Diameter of the disc that, cut by the window's edge as `mask` is, best covers `mask`: least
    squares between an anti-aliased disc (clipped to the window) and the mask, started from the
    outline's circle. The size of a section the window cuts; 0 when too little outline is left.

    Fitting the area rather than the outline alone: a lumpy arc of a quarter of a section or less
    gives a circle that is noisy and, fitted algebraically (Kasa), biased small; the visible area
    and the chord along the window's edge pin the disc down."""
    from scipy import optimize

    start = outline_circle_px(mask)
    if start is None:
        return 0.0
    rows, cols = np.nonzero(mask)
    # A crop a few pixels beyond the mask: a disc that grows past it covers pixels that count
    # against it, while the window's own edges (where the section is cut) stay open.
    pad = 3 + int(0.1 * math.sqrt(rows.size))
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, mask.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, mask.shape[1])
    # Large blobs are fitted on every `step`-th pixel, the disc's edge ramp as wide as the step.
    step = max(1, math.ceil(math.sqrt((r1 - r0) * (c1 - c0) / FIT_PIXELS)))
    target = mask[r0:r1:step, c0:c1:step].astype(float).ravel()
    yy, xx = (v.astype(float).ravel() for v in np.mgrid[r0:r1:step, c0:c1:step])

    def residuals(p: np.ndarray) -> np.ndarray:
        return np.clip((p[2] - np.hypot(yy - p[0], xx - p[1])) / step + 0.5, 0.0, 1.0) - target

    def jacobian(p: np.ndarray) -> np.ndarray:
        d = np.maximum(np.hypot(yy - p[0], xx - p[1]), 1e-9)
        ring = (np.abs(p[2] - d) < 0.5 * step) / step
        return np.column_stack([ring * (yy - p[0]) / d, ring * (xx - p[1]) / d, ring])

    fit = optimize.least_squares(residuals, np.array(start), jac=jacobian, method="lm", max_nfev=FIT_MAX_STEPS)
    return float(2 * abs(fit.x[2]))


def detect_candidate(pixels: np.ndarray, detector: LearnedDetector, pixel_size_um: float,
                     window_px: int = WINDOW_PX) -> ScaleCandidate:
    """Run the detector on a centred window of `pixels` as if it had `pixel_size_um`."""
    scale = pixel_size_um / detector.working_pixel_size_um
    h, w = pixels.shape
    side = math.ceil(window_px / scale)
    r0, c0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    window = pixels[r0 : r0 + side, c0 : c0 + side]
    fg, dist, _ = detector.predict_maps(window, pixel_size_um)
    labels = labels_from_maps(fg, dist, params=detector.params)
    n = int(labels.max())
    if n == 0:
        return ScaleCandidate(pixel_size_um, 0, 0.0, 0.0, 0.0)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    on_border = np.isin(np.arange(1, n + 1), edge)
    diameters = 2 * np.sqrt(areas / math.pi) * detector.working_pixel_size_um
    # A section the window cuts looks smaller than it is: the disc fitted to it says how large it is
    # (at most MAX_CUT_GROWTH x its visible size). Matters most at high magnification (1-3 particles).
    for k in np.flatnonzero(on_border & (areas > 0)):
        fitted = fitted_circle_diameter_px(labels == k + 1) * detector.working_pixel_size_um
        diameters[k] = min(max(diameters[k], fitted), MAX_CUT_GROWTH * diameters[k])
    scores = object_scores(fg, labels, detector.params.foreground_threshold)[1:]  # the detector's own score
    present = areas > 0
    return summarise_objects(pixel_size_um, diameters[present], areas[present], scores[present], int(fg.size))


def pick_estimate(candidates: tuple[ScaleCandidate, ...],
                  reference_diameter_um: float = REFERENCE_DIAMETER_UM) -> ScaleEstimate | None:
    """The pixel size at which the detected diameter crosses the reference (see the module doc);
    None when the detector found nothing at any candidate."""
    found = [c for c in candidates if c.n_objects > 0]
    if not found:
        return None
    log_px = np.log([c.pixel_size_um for c in found])
    gap = np.log([c.diameter_um / reference_diameter_um for c in found])
    crossings: list[tuple[float, float]] = []  # (plausibility, log pixel size)
    for i in range(len(found) - 1):
        if gap[i] < 0 <= gap[i + 1]:
            t = -gap[i] / (gap[i + 1] - gap[i])
            nearest = found[i] if t < 0.5 else found[i + 1]
            crossings.append((nearest.plausibility, float(log_px[i] + t * (log_px[i + 1] - log_px[i]))))
    if crossings:
        plausibility, log_est = max(crossings)
        return ScaleEstimate(float(math.exp(log_est)), float(plausibility), tuple(candidates))
    # No crossing (always smaller or always larger than the reference): the candidate closest
    # to it, rescaled by the ratio, with a score of 0 so that the caller can tell.
    i = int(np.argmin(np.abs(gap)))
    est = found[i].pixel_size_um * reference_diameter_um / found[i].diameter_um
    return ScaleEstimate(float(est), 0.0, tuple(candidates))


def estimate_pixel_size_um(
    pixels: np.ndarray,
    detector: LearnedDetector,
    candidates_um: tuple[float, ...] = CANDIDATES_UM,
    reference_diameter_um: float = REFERENCE_DIAMETER_UM,
    window_px: int = WINDOW_PX,
) -> ScaleEstimate | None:
    """Estimate the pixel size (µm) of a grey image from the learned detector's particles.

    Candidates at which the image would span fewer than `MIN_FIELD_DIAMETERS` reference diameters
    are not tried. Returns None when the detector finds no object at any candidate tried (a blank
    image, or one too small to hold two particles at any candidate).

    Examples
    --------
    >>> est = estimate_pixel_size_um(image.pixels, LearnedDetector())  # doctest: +SKIP
    >>> est.pixel_size_um                                              # doctest: +SKIP
    0.0493
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
    field_px = math.sqrt(pixels.shape[0] * pixels.shape[1])
    usable = [float(c) for c in sorted(candidates_um) if field_px * c >= MIN_FIELD_DIAMETERS * reference_diameter_um]
    found = tuple(detect_candidate(pixels, detector, c, window_px) for c in usable)
    return pick_estimate(found, reference_diameter_um)
