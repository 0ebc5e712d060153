"""Edge contrast: bright bands just inside the particle outlines, as a secondary-electron image shows them.

A secondary-electron (SE, in-lens) image of a polished cross-section brightens every edge: a band a
tenth of a µm wide inside each particle outline and each pore rim, and relief shading from the detector's
side. The shipped networks were trained on backscatter-like contrast without such bands. On generated
fields in the SE-like look (`imaging.looks=[se_edges]`, tuning seed 556) detection held (F1 0.955 against
0.948 plain), but the phase model lost the pores' and cracks' contrast under the bands: porosity read
1.28 pp low (plain −0.17), crack F1 0.66 (0.90), intact over-called by 9.9 pp, class macro-F1 0.77 (0.95).
docs/BENCHMARKS.md "Edge contrast".

`edge_contrast` reads it per image: for each of up to `MAX_SECTIONS` whole sections, the median grey level
of each 1-pixel ring inside the outline (out to `BAND_UM`), minus the median of the reference annulus just
under them (from `BAND_UM` to `REFERENCE_UM` deep: near the rings, so a radial porosity gradient does not
read as an edge), over the annulus' contrast to the matrix just outside; the median ring profile over the
sections, and its largest value. Backscatter-like fields keep the rings at or under the annulus' grey (blur
spreads the dark matrix inwards); the SE-like look raises them. `fracscope.report.quality` flags an image
over `EDGE_CONTRAST_LIMIT`.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from fracscope.measure.cracks import depth_px

BAND_UM = 0.3  # the rings measured: out to this depth inside the outline (at least MIN_BAND_PX rings)
REFERENCE_UM = 0.6  # the reference annulus: from the band to this depth (at least 2 px deep)
MIN_BAND_PX = 3
MIN_SECTION_UM = 2.0  # smaller sections have too little inside the band
MATRIX_GAP_PX = 2  # the matrix ring starts this far outside the outline (past the blurred edge)
MIN_RING_PX = 20  # the reference annulus and the matrix ring need this many pixels to give their grey level
MAX_SECTIONS = 32  # evenly spaced over the sections by id: bounded cost on an image of hundreds
# Measured (docs/BENCHMARKS.md "Edge contrast"): generated fields in the plain look 0.014-0.080 (76 fields,
# held-out and tuning), the SE-like look 0.073-0.447 (36 of 38 over 0.10); the real images of data/real: see there.
EDGE_CONTRAST_LIMIT = 0.10


def _distance_outside(own: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel outside the section to its nearest section pixel (exact, OpenCV's;
    unlike `depth_px` the window's edge is not the section)."""
    return cv2.distanceTransform((~own).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def ring_profile(pixels: np.ndarray, own: np.ndarray, matrix: np.ndarray, band_px: int,
                 reference_px: float) -> np.ndarray | None:
    """Grey level of each 1-pixel ring inside one section's outline, relative to the annulus under them and
    to the matrix.

    pixels, own, matrix : the section's window: grey levels, the section's mask, where the matrix is (no section).
    Ring k holds the pixels whose distance to the nearest pixel outside the section is in (k, k + 1] px (ring 0:
    the outline), k < band_px; the reference annulus those in (band_px, reference_px]; the matrix ring the matrix
    pixels `MATRIX_GAP_PX` to reference_px outside. Returns (band_px,) values (ring median - reference median) /
    (reference median - matrix median); None when the annulus or the matrix ring is too small, or the annulus is
    not brighter than the matrix.
    """
    d_in = depth_px(own)  # the section never touches the window's edge: the same as without padding
    d_out = _distance_outside(own)
    shell = (d_in > 0) & (d_in <= reference_px)  # the rings and the annulus, then binned on their own pixels
    grey, ring_of = pixels[shell], np.ceil(d_in[shell]).astype(np.int64) - 1
    reference = grey[ring_of >= band_px]
    outside = pixels[(d_out > MATRIX_GAP_PX) & (d_out <= reference_px) & matrix]
    if reference.size < MIN_RING_PX or outside.size < MIN_RING_PX:
        return None
    reference_grey, matrix_grey = float(np.median(reference)), float(np.median(outside))
    if reference_grey <= matrix_grey:
        return None
    rings = [grey[ring_of == k] for k in range(band_px)]
    return np.array([(float(np.median(r)) - reference_grey) / (reference_grey - matrix_grey) if r.size else np.nan
                     for r in rings])


def edge_contrast(pixels: np.ndarray, instances: np.ndarray, pixel_size_um: float | None,
                  boxes: list | None = None) -> float | None:
    """How much brighter than the annulus under it a section's outline band is, over the image (module doc).

    pixels: the image in dark-pore contrast (what the networks see); instances: its sections; pixel_size_um: the
    image's (or its estimate); None uses the band's minimum in pixels. boxes: `scipy.ndimage.find_objects` of
    `instances` or of a map whose sections contain these (saves the pass). None when no section can be measured.
    """
    px = pixel_size_um if pixel_size_um and np.isfinite(pixel_size_um) and pixel_size_um > 0 else None
    band_px = max(MIN_BAND_PX, int(np.ceil(BAND_UM / px))) if px else MIN_BAND_PX
    reference_px = max(band_px + 2.0, REFERENCE_UM / px if px else 0.0)
    min_diameter_px = MIN_SECTION_UM / px if px else 2 * reference_px
    h, w = instances.shape
    boxes = ndi.find_objects(instances) if boxes is None else boxes
    whole = [i + 1 for i, b in enumerate(boxes)
             if b is not None and b[0].start > 0 and b[1].start > 0 and b[0].stop < h and b[1].stop < w]
    if len(whole) > MAX_SECTIONS:
        whole = [whole[int(k)] for k in np.linspace(0, len(whole) - 1, MAX_SECTIONS)]
    pad = int(np.ceil(reference_px)) + 1
    profiles = []
    for pid in whole:
        rows, cols = boxes[pid - 1]
        window = (slice(max(rows.start - pad, 0), rows.stop + pad), slice(max(cols.start - pad, 0), cols.stop + pad))
        labels = instances[window]
        own = labels == pid
        if 2.0 * np.sqrt(own.sum() / np.pi) < min_diameter_px:
            continue
        profile = ring_profile(np.asarray(pixels[window], np.float32), own, labels == 0, band_px, reference_px)
        if profile is not None:
            profiles.append(profile)
    if not profiles:
        return None
    return float(np.nanmax(np.nanmedian(np.array(profiles), axis=0)))
