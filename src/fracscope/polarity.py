"""Pore polarity: are an image's pores empty (dark) or filled with Pt or resin (bright), and what the
networks see of a filled one.

In a Pt- or resin-infiltrated BSE cross-section the space between particles and inside their pores and
cracks is brighter than the particles; in every other image (and in everything the shipped networks were
trained on) it is darker. `image_pore_polarity` tells them apart from the particles a first detection
finds. The networks then see a bright-pore image in dark-pore contrast. The detector sees
`dark_pore_contrast`: the grey scale folded at the particles' own grey level, so every phase that differs
from the particle, brighter (Pt, filled pores) or darker (unfilled voids, binder, the current collector),
becomes darker than it. The phase and crop models see `fill_darkened`: the particles' grain texture as it
is, and only what is brighter than it turned dark. The measurements and overlays keep the image's own pixels; the paper's threshold segmenter thresholds them in
the bright direction (`fracscope.measure.threshold`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from fracscope.crop import NORM_PERCENTILES, normalize_intensity, strided_sample

POLARITIES: tuple[str, ...] = ("dark", "bright")
PORE_POLARITY_SETTINGS: tuple[str, ...] = (*POLARITIES, "auto")  # what `pore_polarity` may be set to
# The band just outside the detected particles decides whether an image's pores are filled: within
# RING_PX of a particle, pores between neighbours hold Pt or resin in an infiltrated image and dark matrix
# otherwise; farther away the current collector or binder can dominate either way. Measured shares of the band
# brighter than the particles' median grey: 0-0.02 on dark-pore images (generator looks, 3_phase.tif, the CT
# slice), 0.42-0.88 on infiltrated ones (the generator's binder 5-50 %) and 0.51 on the real Pt-infiltrated
# BSE image (the whole space between particles there: 0.32, a third of it the Al collector).
RING_PX = 6
BRIGHT_RING_SHARE = 0.25
# A detector trained on dark pores can take a broad Pt fill for particles; the band around those is not
# brighter (generated infiltrated fields: 0.01-0.17). Such an image shows its fill in the histogram: its
# commonest grey (the particles) between a thick much brighter phase (above MIN_BRIGHT_SHARE of the pixels
# after an opening of THICK_OPENING_PX, which leaves out thin bright SE edges) and a much darker one
# (above MIN_DARK_SHARE; an image whose commonest grey is its dark matrix has none). Measured, tuning
# seeds 101-102: generated infiltrated 0.13-0.26 thick brighter, 0.06-0.13 darker; plain, SE-edge,
# charging and smeared looks, 3_phase.tif and the CT slice at most 0.004 thick brighter, or no darker
# phase; the real Pt image 0.06 and 0.07. It is then detected again in dark-pore contrast, and called
# bright when the band around those particles is (generated infiltrated 0.64-0.70, the Pt image 0.51; a
# bright FIB Pt cap above a dark-pore section leaves the band around the particles dark).
THICK_OPENING_PX = 2
MIN_BRIGHT_SHARE = 0.03
MIN_DARK_SHARE = 0.02

# The fold (`dark_pore_contrast`), on the image's grey scale stretched as the networks' inputs are
# (`fracscope.crop.normalize_intensity`), the percentiles taken over a strided subsample of at most
# STAT_SAMPLES pixels (`fracscope.crop.strided_sample`):
STAT_SAMPLES = 1 << 18
# the particle grey level is the histogram's mode over this many bins, smoothed by HIST_SIGMA_BINS, leaving
# out END_BINS at each end (clipped Pt or voids pile up there and can outnumber the particle pixels);
HIST_BINS = 256
HIST_SIGMA_BINS = 3.0
END_BINS = 3
# grey levels farther than FOLD_DEPTH from it are all equally "not particle" (the detector then sees the Al
# collector, the binder and the Pt as one dark matrix, not as a mid-grey object);
FOLD_DEPTH = 0.25
# a grey opening of this radius (image pixels) removes the one-pixel bright seams that the fold draws where
# Pt meets a void (its blurred edge passes through the particle grey).
SEAM_OPENING_PX = 1
# Tuned on generated infiltrated fields (tuning seed 101, detector F1 0.93 against 0.945 for the same fields
# rendered with dark pores; 0.18 unfolded) with FOLD_DEPTH 0.20-0.31 within 0.01 of each other.
# The phase and crop models see the fill darkened instead (`fill_darkened`): the fold also turns the bright half
# of the particles' grain texture darker, which they read as pores (porosity +1.4 pp on tuning fields). Grey
# levels up to FILL_TEXTURE_SIGMAS above the particle grey stay; brighter ones fall with slope FILL_SLOPE (tuning
# seed 101, whole pipeline: porosity bias -0.16 pp; 3 sigmas: -1.18 pp; 2 sigmas, slope 8: -0.24 pp).
FILL_TEXTURE_SIGMAS = 1.5
FILL_SLOPE = 4.0


def bright_band_share(pixels: np.ndarray, instances: np.ndarray) -> float:
    """Share of the band within RING_PX outside the detected particles that is brighter than their median
    grey; 0 when either region is empty."""
    inside = instances > 0
    if not inside.any():
        return 0.0
    ring = ndi.binary_dilation(inside, iterations=RING_PX) & ~inside
    if not ring.any():
        return 0.0
    values = np.asarray(pixels)
    particle_grey = float(np.median(values[inside]))
    return float(np.mean(values[ring] > particle_grey))


def image_pore_polarity(pixels: np.ndarray, instances: np.ndarray) -> str:
    """"bright" when the band just outside the detected particles is mostly brighter than the particles
    (pores filled with Pt or resin), else "dark" (empty pores); "dark" when either region is empty."""
    return "bright" if bright_band_share(pixels, instances) > BRIGHT_RING_SHARE else "dark"


def has_mid_grey_particles(pixels: np.ndarray) -> bool:
    """Whether the image's commonest grey (`particle_grey_level`) lies between a thick phase much brighter
    than it (Pt, resin) and one much darker (unfilled voids, binder): the histogram of an infiltrated
    section. Then a detector trained on dark pores may have taken the fill for particles, and the image is
    worth detecting again in dark-pore contrast (`fracscope.locate.detect_in_dark_pore_contrast`)."""
    # On a subsample first, without the opening (at most what the opening leaves): most dark-pore images
    # have no brighter phase at all, and stop here for a few ms.
    sample = stretch(strided_sample(pixels, STAT_SAMPLES))
    grey = particle_grey_level(sample)
    if not ((sample > grey + FOLD_DEPTH).mean() > MIN_BRIGHT_SHARE and (sample < grey - FOLD_DEPTH).mean() > MIN_DARK_SHARE):
        return False
    stretched = stretch(pixels)
    grey = particle_grey_level(stretched)
    brighter = ndi.binary_opening(stretched > grey + FOLD_DEPTH, iterations=THICK_OPENING_PX)
    darker = stretched < grey - FOLD_DEPTH
    return bool(brighter.mean() > MIN_BRIGHT_SHARE and darker.mean() > MIN_DARK_SHARE)


def check_pore_polarity_setting(setting: str) -> None:
    """Refuse a `pore_polarity` setting other than dark, bright or auto."""
    if setting not in PORE_POLARITY_SETTINGS:
        raise ValueError(f"pore_polarity must be one of {list(PORE_POLARITY_SETTINGS)}, got {setting!r}")


def stretch(pixels: np.ndarray) -> np.ndarray:
    """float32 grey levels with the `fracscope.crop.NORM_PERCENTILES` (of a `strided_sample` of at most
    STAT_SAMPLES pixels) mapped to 0 and 1, clipped there; zeros for a flat image."""
    return normalize_intensity(pixels, *NORM_PERCENTILES, max_samples=STAT_SAMPLES)


def particle_grey_level(stretched: np.ndarray) -> float:
    """The grey level (0-1, on `stretch`'s scale) of the most common phase away from the clipped ends:
    the particles, which cover most of an electrode cross-section."""
    counts, edges = np.histogram(stretched, bins=HIST_BINS, range=(0.0, 1.0))
    counts = counts.astype(float)
    counts[:END_BINS] = 0
    counts[-END_BINS:] = 0
    smooth = ndi.gaussian_filter1d(counts, HIST_SIGMA_BINS)
    peak = int(np.argmax(smooth))
    return float((edges[peak] + edges[peak + 1]) / 2)


def dark_pore_contrast(pixels: np.ndarray) -> np.ndarray:
    """A bright-pore image as the detector sees it: float32, brightest at the particle grey level and
    darker the farther a pixel's grey is from it (either way), down to `FOLD_DEPTH`; seams opened."""
    stretched = stretch(pixels)
    grey = particle_grey_level(stretched)
    folded = -np.minimum(np.abs(stretched - grey), FOLD_DEPTH)
    return (_open_seams(folded) + FOLD_DEPTH).astype(np.float32)


def fill_darkened(pixels: np.ndarray, particle: np.ndarray | None = None) -> np.ndarray:
    """A bright-pore image as the phase and crop models see it: float32 on `stretch`'s scale, unchanged up
    to FILL_TEXTURE_SIGMAS robust standard deviations of the particle grey above it (the particles' own
    grain texture stays), and darker the brighter a pixel is beyond that (slope FILL_SLOPE, floored at 0):
    Pt- or resin-filled pores and cracks turn as dark as empty ones; seams opened. The particle grey is the
    median over `particle` (a mask, e.g. a FIB slice's section, where the fill may cover most of the
    image), else the histogram's mode (`particle_grey_level`)."""
    stretched = stretch(pixels)
    if particle is not None and particle.any():
        grey = float(np.median(stretched[particle]))
    else:
        grey = particle_grey_level(stretched)
    near = np.abs(stretched - grey) < FOLD_DEPTH
    sigma = 1.4826 * float(np.median(np.abs(stretched[near] - grey))) if near.any() else 0.0
    top = grey + FILL_TEXTURE_SIGMAS * sigma
    darkened = np.where(stretched <= top, stretched, np.maximum(top - (stretched - top) * FILL_SLOPE, 0.0))
    return _open_seams(darkened).astype(np.float32)


def _open_seams(values: np.ndarray) -> np.ndarray:
    if SEAM_OPENING_PX <= 0:
        return values
    r = SEAM_OPENING_PX
    disk = np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r
    return ndi.grey_opening(values, footprint=disk)
