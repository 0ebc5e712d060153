"""Detect → crop: from an image to its particle instances and their crops.

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
from fracscope.io import ReadFailure
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


@dataclass
class LocateFailure:
    """An image whose detection or cropping raised; the run records it and goes on."""

    image: SEMImage
    error: str


def locate_particles(image: SEMImage, detector: Detector, crop_spec: CropSpec | None) -> LocatedParticles:
    """Detect the particles of one image and cut a crop around each, as `crop_spec` (the crop model's)
    says; no crops when it is None (no crop model runs). An image without a pixel size first gets
    the detector's estimate (`with_estimated_scale`), which the detector and the phase model use."""
    t0 = time.perf_counter()
    image = with_estimated_scale(image, detector)
    instances, scores = detector.detect_scored(image)
    t1 = time.perf_counter()
    crops = crop_particles(image.pixels, instances, crop_spec) if crop_spec is not None else []
    t2 = time.perf_counter()
    seconds = {"detect": t1 - t0, "crop": t2 - t1}
    return LocatedParticles(image, instances, crops, seconds, detector.min_diameter_um, scores)


def with_estimated_scale(image: SEMImage, detector: Detector) -> SEMImage:
    """`image` with the detector's pixel-size estimate when it has no pixel size (source
    "estimated"; lengths stay in pixels); unchanged when it has one or the detector gives none."""
    if image.working_pixel_size_um is not None:
        return image
    estimate = detector.estimate_pixel_size_um(image.pixels)
    if estimate is None:
        return image
    return dataclasses.replace(image, estimated_pixel_size_um=float(estimate), pixel_size_source="estimated")


def locate_safely(image: SEMImage, detector: Detector, crop_spec: CropSpec | None):
    """`locate_particles`, or a `LocateFailure` that says why it raised."""
    try:
        return locate_particles(image, detector, crop_spec)
    except Exception as exc:  # one bad image must not stop a run over thousands
        return LocateFailure(image, f"{type(exc).__name__}: {exc}")


# Set by the pool initializer, and only inside worker processes: each builds its detector once.
_worker_args: tuple[Detector, CropSpec | None] | None = None


def _init_worker(detect_cfg: Mapping[str, Any], crop_spec: CropSpec | None, parent_pid: int) -> None:
    global _worker_args
    die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: the parent handles it and shuts the pool down
    # (`sigint_ignored` covers the start when the pool is used from the main thread).
    release_sigint_in_child()
    _worker_args = (build_detector(detect_cfg), crop_spec)


def _locate_in_worker(image: SEMImage):
    assert _worker_args is not None, "worker not initialised"
    return locate_safely(image, *_worker_args)


def locate_ahead(
    images: Iterable[SEMImage | ReadFailure],
    detect_cfg: Mapping[str, Any],
    crop_spec: CropSpec | None,
    workers: int = 1,
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
            yield locate_safely(item, detector, crop_spec) if isinstance(item, SEMImage) else item
        return
    build_detector(detect_cfg)  # fail here on a bad config, not in every worker
    depth = workers + 1
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(dict(detect_cfg), crop_spec, os.getpid())) as pool:
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
