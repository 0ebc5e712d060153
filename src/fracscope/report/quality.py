"""Quality flags of one analysed image: which images to check first, and why.

Each flag is one rule on one image's result, its threshold a named constant below.
`image_quality` computes the numbers and the flags of an `ImageResult`; `tables.image_row`
writes them to images.csv (`QUALITY_COLUMNS`); `describe_flags` says a row's flags in words
(summary.md, and the warning a bulk run logs for an implausible scale). docs/OUTPUTS.md
defines every flag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fracscope.crop import strided_sample
from fracscope.edges import EDGE_CONTRAST_LIMIT
from fracscope.illumination import SHADING_LIMIT
from fracscope.types import ImageResult, ParticleResult

SCALE_IMPLAUSIBLE = "scale_implausible"
COARSE_PIXELS = "coarse_pixels"
FEW_PARTICLES = "few_particles"
PARTICLE_AREA_FRACTION = "particle_area_fraction"
LOW_CLASS_CONFIDENCE = "low_class_confidence"
LOW_DETECTOR_SCORE = "low_detector_score"
GREY_LEVELS = "grey_levels"
UNEVEN_ILLUMINATION = "uneven_illumination"
EDGE_CONTRAST = "edge_contrast"
#: Every flag, in the order images.csv lists them (the likeliest to spoil every number first).
FLAGS: tuple[str, ...] = (SCALE_IMPLAUSIBLE, COARSE_PIXELS, FEW_PARTICLES, PARTICLE_AREA_FRACTION, GREY_LEVELS,
                          UNEVEN_ILLUMINATION, EDGE_CONTRAST, LOW_DETECTOR_SCORE, LOW_CLASS_CONFIDENCE)
FLAG_SEPARATOR = ";"

#: images.csv columns this module fills, appended after the older ones.
QUALITY_COLUMNS: tuple[str, ...] = ("quality_flags", "mean_class_confidence", "mean_detector_score",
                                    "particle_area_fraction", "median_eq_diameter", "saturated_fraction",
                                    "grey_range_fraction")

# NMC secondary particles are about 3-20 µm across. A median section under 1 µm or over 40 µm
# is not a population of secondary-particle sections: the pixel size is off by ~10x, or primary
# grains (0.2-1 µm) or clusters of particles were counted as particles (issue 21).
MEDIAN_DIAMETER_RANGE_UM = (1.0, 40.0)
# The detector resamples every image to its working pixel size, so a wrong pixel size does not
# always show in the sizes: at 10x too large it outlines primary grains, which then measure 5 µm.
# The models' files store the pixel sizes they were trained on; beyond 3x outside that range
# (0.035-0.08 -> 0.012-0.24 µm/px for the shipped phase model) particles reach the networks at
# sizes training never showed them, which is more than the spread of particle sizes in training.
TRAINED_RANGE_FACTOR = 3.0
# Mean over an image's particles of the top class probability (at least 1/3 with three classes).
# The shipped models gave 0.94-0.96 on generated 0.05 µm/px fields and 0.85-0.97 on the two real
# images of ../shared/real at the pixel sizes tried; below 0.7 most particles sit near a class
# boundary and the image's class fractions are unreliable.
MIN_MEAN_CLASS_CONFIDENCE = 0.7
# Mean of the learned detector's object scores (`detect.postprocess.object_scores`).
# The shipped file's own cut-off (min_score) drops objects under 0.94, so the mean of the kept ones
# lies in 0.94-1: 0.99 on generated fields, 0.966-0.971 on the two real images of ../shared/real.
# Under 0.96 most kept objects sit at the cut-off. (It did not separate the Pt-infiltrated image,
# where the detector fails, from the nano-CT slice, where it works: 0.968 against 0.966.)
MIN_MEAN_DETECTOR_SCORE = 0.96
# Sum of the section areas over the image area. Electrode cross-sections are ~50-75 % active
# material; under 5 % particles were missed (or the field is mostly matrix), over 95 % the matrix
# was taken for particles (e.g. bright infiltrated pores) or the field lies inside one particle.
AREA_FRACTION_RANGE = (0.05, 0.95)
# Generated training fields have a few % of their pixels at either end (0-5.8 % measured at
# 0.05 µm/px), the real images of ../shared/real 0-4.6 %. Over 20 % at the darkest or brightest
# grey level means saturated detector or contrast settings that erase pores and cracks.
MAX_SATURATED_FRACTION = 0.20
# 1st-99th percentile spread over the grey-level range (see `grey_level_range`): 0.80-0.82 on
# generated fields, 0.24 on the real nano-CT slice (91 grey levels), 0.95 on the real BSE image.
# Under 5 % (13 of 256 levels) the image is nearly flat and quantisation noise is of the size of
# the pore/solid contrast.
MIN_GREY_RANGE_FRACTION = 0.05
# Percentiles come from a regular subsample of at most this many pixels (bounded cost).
GREY_SAMPLE_PX = 1 << 20
# The numbers are rounded to this many decimals before the flags are taken from them: the table
# then reproduces every flag, and the last digits of the class probabilities, which differ by
# ~1e-10 between executor=local and executor=dask, do not make the two images.csv differ.
DECIMALS = 6


@dataclass(frozen=True)
class ImageQuality:
    """The numbers behind an image's quality flags, and the flags (in `FLAGS` order).

    median_eq_diameter is in µm when the pixel size is known, px otherwise; None without particles.
    """

    mean_class_confidence: float | None
    mean_detector_score: float | None
    particle_area_fraction: float
    median_eq_diameter: float | None
    saturated_fraction: float
    grey_range_fraction: float
    flags: tuple[str, ...]

    def columns(self) -> dict[str, object]:
        """The images.csv cells (`QUALITY_COLUMNS`)."""
        return {
            "quality_flags": FLAG_SEPARATOR.join(self.flags),
            "mean_class_confidence": self.mean_class_confidence,
            "mean_detector_score": self.mean_detector_score,
            "particle_area_fraction": self.particle_area_fraction,
            "median_eq_diameter": self.median_eq_diameter,
            "saturated_fraction": self.saturated_fraction,
            "grey_range_fraction": self.grey_range_fraction,
        }


def median_section_diameter(particles: Sequence[ParticleResult]) -> float | None:
    """Median equivalent diameter of the sections that do not touch the border (all sections when
    every one does: a border cut shrinks a section, but not by 10x); None without particles."""
    whole = [p for p in particles if not p.touches_border] or list(particles)
    d = [float(p.measurements["eq_diameter_um"]) for p in whole if "eq_diameter_um" in p.measurements]
    return float(np.median(d)) if d else None


def mean_class_confidence(particles: Sequence[ParticleResult]) -> float | None:
    """Mean over the particles of the top class probability; None without particles."""
    return float(np.mean([max(p.probs) for p in particles])) if particles else None


def mean_detector_score(particles: Sequence[ParticleResult]) -> float | None:
    """Mean of the particles' detector scores; None when the detector gives none (or no particle)."""
    scores = [p.detector_score for p in particles if p.detector_score is not None]
    return float(np.mean(scores)) if scores else None


def particle_area_fraction(instances: np.ndarray) -> float:
    """Fraction of the image's pixels inside a reported particle section."""
    return float(np.count_nonzero(instances)) / max(int(np.size(instances)), 1)


def grey_level_range(pixels: np.ndarray) -> tuple[float, float]:
    """(darkest, brightest) grey level the image could hold.

    Integer images: 0 to 2**k - 1 for the smallest k >= 8 that holds the image's maximum (a 12-bit
    detector's image in a 16-bit file: 0-4095). Float images: 0-1 when they lie in it, else their
    own minimum and maximum.
    """
    pixels = np.asarray(pixels)
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        top = int(pixels.max()) if pixels.size else 0
        k = max(8, top.bit_length())
        return float(info.min if info.min < 0 else 0), float(min((1 << k) - 1, info.max))
    lo, hi = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 1.0)
    return (0.0, 1.0) if 0.0 <= lo and hi <= 1.0 else (lo, hi)


def grey_levels(pixels: np.ndarray, sample_px: int = GREY_SAMPLE_PX) -> tuple[float, float]:
    """(saturated fraction, grey range fraction) of an image.

    saturated: fraction of pixels at the darkest or brightest level of `grey_level_range`;
    range: (99th - 1st percentile) / that range's width (percentiles of a `fracscope.crop.strided_sample` of
    at most `sample_px` pixels).
    """
    pixels = np.asarray(pixels)
    if not pixels.size:
        return 0.0, 0.0
    lo, hi = grey_level_range(pixels)
    saturated = float(np.count_nonzero((pixels <= lo) | (pixels >= hi))) / pixels.size
    p1, p99 = (float(v) for v in np.percentile(strided_sample(pixels, sample_px), (1, 99)))
    return saturated, ((p99 - p1) / (hi - lo) if hi > lo else 0.0)


def scale_causes(pixel_size_um: float | None, median_diameter_um: float | None,
                 trained_range_um: Sequence[float] | None) -> list[str]:
    """Why an image's scale looks wrong, in words (empty when it looks right or is unknown).

    Looks at the median section (`MEDIAN_DIAMETER_RANGE_UM`) and at the pixel size against the
    models' trained pixel sizes (`TRAINED_RANGE_FACTOR`); both need the pixel size.
    """
    if pixel_size_um is None or not math.isfinite(pixel_size_um):
        return []
    causes = []
    low_d, high_d = MEDIAN_DIAMETER_RANGE_UM
    expected = f"secondary particles: {low_d:g}-{high_d:g} µm"
    if median_diameter_um is not None and median_diameter_um < low_d:
        causes.append(f"median section {median_diameter_um:.2g} µm ({expected}): pixel size ~10x too small, "
                      "or primary grains counted as particles")
    elif median_diameter_um is not None and median_diameter_um > high_d:
        causes.append(f"median section {median_diameter_um:.0f} µm ({expected}): pixel size ~10x too large, "
                      "or clusters of particles counted as one")
    if trained_range_um is not None:
        lo, hi = (float(v) for v in trained_range_um)
        trained = f"pixel size the models were trained on ({lo:g}-{hi:g} µm/px)"
        if pixel_size_um > hi * TRAINED_RANGE_FACTOR:
            causes.append(f"pixel size {pixel_size_um:g} µm/px is {pixel_size_um / hi:.0f}x the largest {trained}: "
                          "if it is ~10x too large, primary grains are outlined as particles")
        elif pixel_size_um < lo / TRAINED_RANGE_FACTOR:
            causes.append(f"pixel size {pixel_size_um:g} µm/px is 1/{lo / pixel_size_um:.0f} of the smallest "
                          f"{trained}: if it is ~10x too small, particles look too small to the detector and "
                          "few are found")
    return causes


def coarse_estimate(pixel_size_um: float | None, estimated_pixel_size_um: float | None,
                    trained_range_um: Sequence[float] | None) -> str | None:
    """Why an image analysed at its estimated pixel size is too coarse for the networks, in words; None when
    a pixel size was given, nothing was estimated, or the estimate is within `TRAINED_RANGE_FACTOR` of the
    largest trained pixel size.

    The estimate fits the particles by construction, so it is not a wrong scale but a coarse one: the
    phase model sees the image upsampled several times and pores and cracks a pixel or two wide are not
    resolved (the real X-ray CT slice of ../shared/real, estimated at 0.33 µm/px: 744 sections, every one
    intact, porosity 0.02 %)."""
    if pixel_size_um is not None or estimated_pixel_size_um is None or trained_range_um is None:
        return None
    est, hi = float(estimated_pixel_size_um), float(trained_range_um[1])
    if not (math.isfinite(est) and est > hi * TRAINED_RANGE_FACTOR):
        return None
    return (f"estimated pixel size {est:.2g} µm/px is {est / hi:.0f}x the largest pixel size the models were "
            f"trained on ({float(trained_range_um[0]):g}-{hi:g} µm/px): pores and cracks a few pixels wide are not "
            "resolved, so porosity, cracks and damage classes are unreliable (read them as lower bounds)")


def flags_of(q: Mapping[str, float | None], pixel_size_um: float | None, n_particles: int,
             trained_range_um: Sequence[float] | None,
             estimated_pixel_size_um: float | None = None, shading: float | None = None,
             edge_contrast: float | None = None) -> tuple[str, ...]:
    """The flags an image's numbers raise (`FLAGS` order); `q` holds the `QUALITY_COLUMNS` numbers,
    `shading` the particles' grey-level drift (`fracscope.illumination`, images.csv `shading`), `edge_contrast`
    the outline bands' brightness (`fracscope.edges`, images.csv `edge_contrast`)."""
    raised = set()
    if shading is not None and shading > SHADING_LIMIT:
        raised.add(UNEVEN_ILLUMINATION)
    if edge_contrast is not None and edge_contrast > EDGE_CONTRAST_LIMIT:
        raised.add(EDGE_CONTRAST)
    median = q["median_eq_diameter"] if pixel_size_um is not None else None
    if scale_causes(pixel_size_um, median, trained_range_um):
        raised.add(SCALE_IMPLAUSIBLE)
    if coarse_estimate(pixel_size_um, estimated_pixel_size_um, trained_range_um):
        raised.add(COARSE_PIXELS)
    if n_particles == 0:
        raised.add(FEW_PARTICLES)
    else:  # with no particle the area is 0 by definition: few_particles says it
        low_a, high_a = AREA_FRACTION_RANGE
        if not low_a <= q["particle_area_fraction"] <= high_a:
            raised.add(PARTICLE_AREA_FRACTION)
    if q["saturated_fraction"] > MAX_SATURATED_FRACTION or q["grey_range_fraction"] < MIN_GREY_RANGE_FRACTION:
        raised.add(GREY_LEVELS)
    if q["mean_detector_score"] is not None and q["mean_detector_score"] < MIN_MEAN_DETECTOR_SCORE:
        raised.add(LOW_DETECTOR_SCORE)
    if q["mean_class_confidence"] is not None and q["mean_class_confidence"] < MIN_MEAN_CLASS_CONFIDENCE:
        raised.add(LOW_CLASS_CONFIDENCE)
    return tuple(f for f in FLAGS if f in raised)


def image_quality(result: ImageResult) -> ImageQuality:
    """The quality numbers and flags of one analysed image."""
    parts = result.particles
    saturated, grey_range = grey_levels(result.image.pixels)
    numbers = {
        "mean_class_confidence": mean_class_confidence(parts),
        "mean_detector_score": mean_detector_score(parts),
        "particle_area_fraction": particle_area_fraction(result.instances),
        "median_eq_diameter": median_section_diameter(parts),
        "saturated_fraction": saturated,
        "grey_range_fraction": grey_range,
    }
    numbers = {k: None if v is None else round(v, DECIMALS) for k, v in numbers.items()}
    flags = flags_of(numbers, result.image.pixel_size_um, len(parts), result.pixel_size_range_um,
                     result.image.estimated_pixel_size_um, result.shading, result.edge_contrast)
    return ImageQuality(**numbers, flags=flags)


def parse_flags(cell: object) -> list[str]:
    """The flags of an images.csv `quality_flags` cell ("" or missing: none)."""
    return [f for f in str(cell or "").split(FLAG_SEPARATOR) if f]


def _number(row: Mapping[str, object], column: str) -> float | None:
    value = row.get(column)
    if value is None or value == "":
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def illumination_evened(row: Mapping[str, object]) -> bool:
    """Whether an images.csv row's image was evened out (True in memory, "True" read back from the CSV)."""
    return str(row.get("illumination_evened")) in ("True", "true", "1")


def describe_flags(row: Mapping[str, object], trained_range_um: Sequence[float] | None = None) -> list[str]:
    """One phrase per flag of an images.csv row (values as written or as read back), `FLAGS` order."""
    words = []
    px = _number(row, "pixel_size_um")
    for flag in (f for f in FLAGS if f in parse_flags(row.get("quality_flags"))):
        if flag == SCALE_IMPLAUSIBLE:
            causes = scale_causes(px, _number(row, "median_eq_diameter"), trained_range_um)
            known = f"pixel size {px:g} µm/px" if px is not None else "pixel size unknown"
            words.append("scale implausible: " + ("; ".join(causes) or known))
        elif flag == COARSE_PIXELS:
            why = coarse_estimate(px, _number(row, "pixel_size_estimate_um"), trained_range_um)
            words.append("coarse pixels: " + (why or "the estimated pixel size is far coarser than the models' "
                                                     "training: pores and cracks are not resolved"))
        elif flag == FEW_PARTICLES:
            words.append("no particle found: wrong scale, an unfamiliar contrast, or no particles in the field")
        elif flag == PARTICLE_AREA_FRACTION:
            f = _number(row, "particle_area_fraction") or 0.0
            low, high = AREA_FRACTION_RANGE
            why = ("particles missed, or a field that is mostly matrix" if f < low
                   else "matrix taken for particles (e.g. bright infiltrated pores), or a field inside one particle")
            words.append(f"particles cover {f:.1%} of the image (expected {low:.0%}-{high:.0%}): {why}")
        elif flag == GREY_LEVELS:
            sat, spread = _number(row, "saturated_fraction") or 0.0, _number(row, "grey_range_fraction")
            parts = []
            if sat > MAX_SATURATED_FRACTION:
                parts.append(f"{sat:.0%} of the pixels at the darkest or brightest grey level (clipped)")
            if spread is not None and spread < MIN_GREY_RANGE_FRACTION:
                parts.append(f"grey levels (1st-99th percentile) span only {spread:.1%} of the range")
            words.append("grey levels unlike the training images: " + "; ".join(parts))
        elif flag == UNEVEN_ILLUMINATION:
            drift = _number(row, "shading")
            how = f"drifts by {drift:.0%}" if drift is not None else "drifts"
            done = (" (evened out before detection and measurement; check the overlay)"
                    if illumination_evened(row)
                    else " (not evened out, even_illumination=false: sections on the dark side may be missed)")
            words.append(f"uneven illumination: the particles' grey level {how} across the image{done}")
        elif flag == EDGE_CONTRAST:
            e = _number(row, "edge_contrast")
            how = f" ({e:.2f} of the particle-matrix contrast)" if e is not None else ""
            words.append(f"bright bands inside the particle outlines{how}, as a secondary-electron image shows: the "
                         "models were trained on backscatter-like contrast, and under such bands pores and thin "
                         "cracks are missed (porosity low, damaged sections called intact); check them on the overlay, "
                         "or image with the backscatter detector")
        elif flag == LOW_DETECTOR_SCORE:
            s = _number(row, "mean_detector_score")
            words.append(f"mean detector score {s:.2f} (< {MIN_MEAN_DETECTOR_SCORE:g}): outlines uncertain, "
                         "check them on the overlay")
        elif flag == LOW_CLASS_CONFIDENCE:
            c = _number(row, "mean_class_confidence")
            words.append(f"mean class confidence {c:.2f} (< {MIN_MEAN_CLASS_CONFIDENCE:g}): many particles near a "
                         "class boundary, check the classes by eye")
    return words

