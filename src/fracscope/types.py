"""The typed objects that flow between stages.

SEM image → particle instances → per-particle crops → CNN → measurements → tables.
Every stage takes and returns these, so each can be tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("intact", "mildly_damaged", "broken")


class Phase(IntEnum):
    """Codes of a phase map (uint8)."""

    BACKGROUND = 0  # matrix / outside any particle
    SOLID = 1
    PORE = 2
    CRACK = 3


PHASE_NAMES: tuple[str, ...] = ("background", "solid", "pore", "crack")
#: Input channels of a section window (`fracscope.sections`), in order.
SECTION_CHANNELS: tuple[str, ...] = ("grey", "mask", "pore", "crack")


@dataclass(frozen=True)
class ReadFailure:
    """A file (or page) that could not be read; iteration goes on without it."""

    source: str
    error: str


@dataclass
class SEMImage:
    """One grayscale SEM image (one page of a file).

    pixels: 2-D array as read (uint8, uint16 or float32); never rescaled here.
    pixel_size_um: edge length of one pixel in µm, or None when unknown.
    pixel_size_source: where pixel_size_um came from ("override", "fei", "zeiss", "tescan",
        "tiff_resolution", "imagej", "hitachi", "jeol", "coco", "scale_bar", "synthetic", "none"), or "estimated"
        when it is None and estimated_pixel_size_um holds an estimate.
    estimated_pixel_size_um: the pixel size estimated from the image itself
        (`fracscope.detect.scale`) when none is known: detection and the phase model run at it,
        lengths stay in pixels.
    """

    pixels: np.ndarray
    pixel_size_um: float | None
    pixel_size_source: str = "none"
    source: str = ""
    page: int = 0
    n_pages: int = 1
    estimated_pixel_size_um: float | None = None

    @property
    def working_pixel_size_um(self) -> float | None:
        """The pixel size the networks run at: the known one, else the estimate, else None."""
        return self.pixel_size_um if self.pixel_size_um is not None else self.estimated_pixel_size_um


@dataclass
class ParticleAnnotation:
    """Ground truth or prediction for one particle of an image.

    particle_id is the particle's value in the instance label map.
    class_name is one of CLASS_NAMES, or None when unlabelled.
    measurements holds extra per-particle numbers (porosity_pct, eq_diameter_um, ...).
    """

    particle_id: int
    class_name: str | None
    measurements: dict[str, float] = field(default_factory=dict)


@dataclass
class AnnotatedImage:
    """An image with optional instance and phase ground truth: one dataset sample.

    instances: uint32 label map (0 = no particle) or None.
    phases: uint8 map of Phase codes or None (no pore/crack annotation).
    """

    image: SEMImage
    stem: str
    instances: np.ndarray | None = None
    phases: np.ndarray | None = None
    particles: list[ParticleAnnotation] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


@dataclass
class ParticleCrop:
    """A fixed-size crop centred on one particle, as the CNN sees it.

    image: float32 (S, S), robustly normalised intensity.
    mask: float32 (S, S) in {0, 1}: this particle's own mask.
    phases: uint8 (S, S) phase codes, or None when unknown.
    scale: output pixels per input pixel (crop pixel size = pixel_size_um / scale).
    bbox: (row0, col0, row1, col1) of the crop window in the source image (may exceed it).
    """

    image: np.ndarray
    mask: np.ndarray
    phases: np.ndarray | None
    particle_id: int
    scale: float
    bbox: tuple[int, int, int, int]
    class_index: int | None = None


@dataclass
class ParticleResult:
    """What inference concluded about one particle.

    probs: class probabilities in CLASS_NAMES order.
    measurements: the columns of `fracscope.measure.measure_particle` (µm units when
        the image's pixel size is known, pixel units otherwise).
    bbox: (row0, col0, row1, col1) of the particle in the image, end-exclusive.
    crop: the ParticleCrop the model saw (kept for review sheets; may be None).
    detector_score: the learned detector's confidence in this object (mean foreground
        probability over it), or None for detectors without scores.
    network_probs: the class probabilities of the networks that ran on this section, by column name:
        the section net's ``net_p_*`` and/or the crop model's class head ``head_p_*``
        (`fracscope.classify.SECTION_FEATURES`, ``HEAD_FEATURES``): the evidence a lab's class rule is
        refitted on beside the crack measurements; empty when neither ran.
    """

    particle_id: int
    class_name: str
    probs: tuple[float, ...]
    low_confidence: bool
    touches_border: bool
    too_small: bool
    bbox: tuple[int, int, int, int]
    measurements: dict[str, float] = field(default_factory=dict)
    crop: ParticleCrop | None = None
    detector_score: float | None = None
    network_probs: dict[str, float] = field(default_factory=dict)


@dataclass
class ImageResult:
    """Everything inference produced for one image page.

    instances: uint32 label map whose ids are the particles' particle_id.
    phases: uint8 predicted phase map on the image grid (Phase codes).
    group: the sample group (sub-folder name or from a mapping CSV).
    pixel_size_range_um: (min, max) pixel size of the images the run's models were trained on
        (their files'), or None when unknown; `fracscope.report.quality` compares the image's with it.
    pore_polarity: the run's `pore_polarity`, or under "auto" what was decided for this image.
    curtain_streaks: crack components of the phase map made solid as curtaining (`fracscope.curtains`).
    shading: the particles' grey-level drift across the image as first detected (`fracscope.illumination`),
        None when not measured; illumination_evened: whether the image was evened out and detected again.
    edge_contrast: how much brighter the sections' outline bands are than the solid under them
        (`fracscope.edges`; an SE-like image's edge brightening), None when not measured.
    """

    image: SEMImage
    stem: str
    group: str
    instances: np.ndarray
    phases: np.ndarray
    particles: list[ParticleResult] = field(default_factory=list)
    pixel_size_range_um: tuple[float, float] | None = None
    pore_polarity: str = "dark"  # "dark" (empty) or "bright" (filled) pores, as this image was segmented
    curtain_streaks: int = 0
    shading: float | None = None
    illumination_evened: bool = False
    edge_contrast: float | None = None
