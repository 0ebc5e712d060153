"""Detect → crop: from an image to its particle instances and their crops.

An image whose pores turn out bright (Pt- or resin-infiltrated, `fracscope.polarity`) is detected again,
and cropped, in dark-pore contrast, which is what the networks were trained on.

`locate_ahead` runs this stage for upcoming images in worker processes while the main
process runs the model on the current one, so detection and the network share the cores.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from fracscope.child_process import die_with_parent, release_sigint_in_child, sigint_ignored
from fracscope.crop import CropSpec, crop_particles
from fracscope.detect import Detector, build_detector
from fracscope.illumination import SHADING_LIMIT, evened, particle_grey_trend
from fracscope.io import ReadFailure
from fracscope.polarity import (
    check_pore_polarity_setting,
    dark_pore_contrast,
    fill_darkened,
    has_mid_grey_particles,
    image_pore_polarity,
)
from fracscope.types import ParticleCrop, SEMImage


@dataclass
class LocatedParticles:
    """One image with its particle instances and their crops: the model's input."""

    image: SEMImage
    instances: np.ndarray
    crops: list[ParticleCrop]
    seconds: dict[str, float]
    min_diameter_um: float | None = None  # the detector's; sections whose final outline is smaller are dropped
    scores: np.ndarray | None = None  # the detector's confidence per object (label k at k - 1); None: it gives none
    pore_polarity: str = "dark"  # the run's setting, or under "auto" what was decided for this image
    network_pixels: np.ndarray | None = None  # what the phase and crop models see when not image.pixels
    # The particles' grey-level drift across the image as first detected (`fracscope.illumination`), None when
    # too few sections to measure it; when evened, `image` holds the evened pixels and was detected again.
    shading: float | None = None
    illumination_evened: bool = False

    @property
    def pixels_for_networks(self) -> np.ndarray:
        """The pixels the phase and crop models run on (`fracscope.polarity.fill_darkened` for bright
        pores); measurements and overlays keep `image.pixels`."""
        return self.image.pixels if self.network_pixels is None else self.network_pixels


@dataclass
class LocateFailure:
    """An image whose detection or cropping raised; the run records it and goes on."""

    image: SEMImage
    error: str


def locate_particles(image: SEMImage, detector: Detector, crop_spec: CropSpec | None,
                     pore_polarity: str = "dark", even_illumination: bool = True) -> LocatedParticles:
    """Detect the particles of one image and cut a crop around each, as `crop_spec` (the crop model's)
    says; no crops when it is None (no crop model runs). An image without a pixel size first gets
    the detector's estimate (`with_estimated_scale`), which the detector and the phase model use.
    `pore_polarity` ("dark", "bright" or "auto", `fracscope.polarity`): bright pores are detected and
    cropped in dark-pore contrast (under "auto" after a first detection has found them bright).
    `even_illumination`: when the found particles' grey level drifts across the image by more than
    `fracscope.illumination.SHADING_LIMIT`, the image is evened out and detected again; everything after
    (networks, measurements, overlay) sees the evened pixels."""
    t0 = time.perf_counter()
    found = detect_in_dark_pore_contrast(image, detector, pore_polarity)
    trend = particle_grey_trend(found.image.pixels, found.instances) if found.image.pixels.ndim == 2 else None
    shading = None if trend is None else trend.shading
    redo = even_illumination and trend is not None and trend.shading > SHADING_LIMIT
    if redo:
        found = detect_in_dark_pore_contrast(dataclasses.replace(image, pixels=evened(image.pixels, trend)),
                                             detector, pore_polarity)
    t1 = time.perf_counter()
    located = LocatedParticles(found.image, found.instances, [], {}, detector.min_diameter_um, found.scores,
                               found.pore_polarity, found.network_pixels, shading, redo)
    if crop_spec is not None:
        located.crops = crop_particles(located.pixels_for_networks, found.instances, crop_spec)
    located.seconds = {"detect": t1 - t0, "crop": time.perf_counter() - t1}
    return located


@dataclass
class Detected:
    """One image's particles as detected, and how its pores were judged (`detect_in_dark_pore_contrast`)."""

    image: SEMImage  # with the pixel size estimate, if one was made
    instances: np.ndarray
    scores: np.ndarray | None
    pore_polarity: str  # "dark" or "bright"
    network_pixels: np.ndarray | None = None  # bright: `fill_darkened`, what the phase and crop models see


def detect_in_dark_pore_contrast(image: SEMImage, detector: Detector, pore_polarity: str) -> Detected:
    """One image detected as its pores need: as it is for dark pores; in `dark_pore_contrast` for bright
    ones, where a missing pixel size is estimated on the folded image (the unfolded one reads the Pt as
    particles), and then `fill_darkened` for the models.

    Under "auto" (`fracscope.polarity`): bright when the band around the first detection's particles is
    brighter than they are; else, when the histogram shows mid-grey particles between a bright fill and
    dark voids, the folded image is detected too and is kept when the band around its particles is bright.
    """
    check_pore_polarity_setting(pore_polarity)
    without_size = image.working_pixel_size_um is None
    unfolded = None
    if pore_polarity != "bright":
        image = with_estimated_scale(image, detector)
        unfolded = Detected(image, *detector.detect_scored(image), "dark")
        if pore_polarity == "dark":
            return unfolded
        band_bright = image_pore_polarity(image.pixels, unfolded.instances) == "bright"
        if not band_bright and not has_mid_grey_particles(image.pixels):
            return unfolded
        unfolded = None if band_bright else unfolded
    folded = dark_pore_contrast(image.pixels)
    if without_size:  # again, on the folded image (an estimate made unfolded, under auto, is replaced)
        image = with_scale_estimated_on(image, folded, detector)
    instances, scores = detector.detect_scored(dataclasses.replace(image, pixels=folded))
    if unfolded is not None and image_pore_polarity(image.pixels, instances) == "dark":
        return unfolded  # mid-grey particles, but no fill around them in either contrast
    return Detected(image, instances, scores, "bright", fill_darkened(image.pixels))


def with_estimated_scale(image: SEMImage, detector: Detector, pore_polarity: str = "dark") -> SEMImage:
    """`image` with the detector's pixel-size estimate when it has no pixel size (source "estimated";
    lengths stay in pixels), made in the contrast its pores need; unchanged when it has one or the
    detector gives none. "dark": on the image as it is. "bright": on its `dark_pore_contrast` (the
    unfolded image reads the Pt as particles). "auto": folded when the histogram shows mid-grey particles
    between a fill and voids (`has_mid_grey_particles`), without a detection: for a whole mosaic
    (`fracscope.mosaic.as_mosaic`), which is never detected whole; a single image is estimated as it is
    and again folded when its detection finds it bright (`detect_in_dark_pore_contrast`)."""
    if image.working_pixel_size_um is not None:
        return image
    check_pore_polarity_setting(pore_polarity)
    if pore_polarity == "auto":
        pore_polarity = "bright" if has_mid_grey_particles(image.pixels) else "dark"
    pixels = dark_pore_contrast(image.pixels) if pore_polarity == "bright" else image.pixels
    return with_scale_estimated_on(image, pixels, detector)


def with_scale_estimated_on(image: SEMImage, pixels: np.ndarray, detector: Detector) -> SEMImage:
    """`image` with the detector's pixel-size estimate made on `pixels` (the image's own, or them in
    dark-pore contrast), source "estimated"; unchanged when the detector gives none."""
    estimate = detector.estimate_pixel_size_um(pixels)
    if estimate is None:
        return image
    return dataclasses.replace(image, estimated_pixel_size_um=float(estimate), pixel_size_source="estimated")


def locate_safely(image: SEMImage, detector: Detector, crop_spec: CropSpec | None, pore_polarity: str = "dark",
                  even_illumination: bool = True):
    """`locate_particles`, or a `LocateFailure` that says why it raised."""
    try:
        return locate_particles(image, detector, crop_spec, pore_polarity, even_illumination)
    except Exception as exc:  # one bad image must not stop a run over thousands
        return LocateFailure(image, f"{type(exc).__name__}: {exc}")


# Set by the pool initializer, and only inside worker processes: each builds its detector once.
_worker_args: tuple[Detector, CropSpec | None, str, bool] | None = None


def _init_worker(detect_cfg: Mapping[str, Any], crop_spec: CropSpec | None, pore_polarity: str,
                 even_illumination: bool, parent_pid: int) -> None:
    global _worker_args
    die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: the parent handles it and shuts the pool down
    # (`sigint_ignored` covers the start when the pool is used from the main thread).
    release_sigint_in_child()
    _worker_args = (build_detector(detect_cfg), crop_spec, pore_polarity, even_illumination)


def _locate_in_worker(image: SEMImage):
    assert _worker_args is not None, "worker not initialised"
    return locate_safely(image, *_worker_args)


def locate_ahead(
    images: Iterable[SEMImage | ReadFailure],
    detect_cfg: Mapping[str, Any],
    crop_spec: CropSpec | None,
    workers: int = 1,
    pore_polarity: str = "dark",
    even_illumination: bool = True,
) -> Iterator[LocatedParticles | LocateFailure | ReadFailure]:
    """Located particles of each image, in input order.

    With workers > 0, up to workers + 1 images are detected ahead in worker processes
    ("spawn", so no thread pools are forked), which bounds memory. With 0, everything
    runs in this process. Read failures, and any item that is not an image (a mosaic that
    is analysed tile by tile, `fracscope.mosaic.MosaicPage`), pass through in order.
    """
    if workers <= 0:
        detector = build_detector(detect_cfg)
        for item in images:
            yield (locate_safely(item, detector, crop_spec, pore_polarity, even_illumination)
                   if isinstance(item, SEMImage) else item)
        return
    build_detector(detect_cfg)  # fail here on a bad config, not in every worker
    depth = workers + 1
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(dict(detect_cfg), crop_spec, pore_polarity, even_illumination,
                                       os.getpid())) as pool:
        pending: deque[Future | ReadFailure] = deque()
        for item in images:
            if not isinstance(item, SEMImage):
                pending.append(item)
            else:
                with sigint_ignored():  # a submit may start a worker
                    pending.append(pool.submit(_locate_in_worker, item))
            while len(pending) > depth:
                yield _resolved(pending.popleft())
        while pending:
            yield _resolved(pending.popleft())


def _resolved(entry: Any):
    return entry.result() if isinstance(entry, Future) else entry
