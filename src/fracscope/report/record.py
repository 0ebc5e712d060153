"""One analysed image split in two: its large files, written where it was analysed, and its small
record (table rows, COCO entry, review thumbnails), which the run's one writer adds to the report.

A local run does both in its writer thread; a run on a cluster writes the files on the worker into the
shared output folder and sends the record to the client (`fracscope.executor`). Both use these two
functions, so both produce the same outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fracscope.report.coco import image_record
from fracscope.report.options import ReportOptions
from fracscope.report.overlay import write_overlay
from fracscope.report.review import ReviewOffer, offer_particles
from fracscope.report.tables import image_key, image_row, particle_row
from fracscope.io.tiff import write_label_tiff
from fracscope.types import ImageResult

INSTANCES_DIR = "instances"
PHASES_DIR = "phases"


def _write_map(
    output_dir: str | os.PathLike, folder: str, result: ImageResult, labels: np.ndarray, dtype: type
) -> Path:
    """Write `<folder>/<stem>.tif` under a temporary name, then rename it: a file under its
    real name is always whole, even when a run is killed while writing it."""
    out = Path(output_dir) / folder
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.stem}.tif"
    tmp = path.with_name(path.name + ".tmp")
    write_label_tiff(tmp, labels, result.image.pixel_size_um, dtype=dtype)
    os.replace(tmp, path)
    return path


def write_instances(result: ImageResult, output_dir: str | os.PathLike) -> Path:
    """Write `instances/<stem>.tif`: the uint32 label map, zlib-compressed.

    When the pixel size is known it is stored as the TIFF resolution (pixels per cm),
    so Fiji and other readers show µm.
    """
    return _write_map(output_dir, INSTANCES_DIR, result, result.instances, np.uint32)


def write_phases(result: ImageResult, output_dir: str | os.PathLike) -> Path:
    """Write `phases/<stem>.tif`: the uint8 phase map (`fracscope.types.Phase` codes) on the
    image grid, zlib-compressed, with the same pixel size tag as `instances/<stem>.tif`.

    Only the pixels of the particles in particles.csv carry codes (`analysis.measure_particles`
    leaves every other pixel 0).
    """
    return _write_map(output_dir, PHASES_DIR, result, result.phases, np.uint8)


@dataclass
class ImageRecord:
    """What the report keeps of one image once its maps and overlay are on disk (small, picklable)."""

    key: tuple[str, int]  # (image, page), as `image_key`
    particle_rows: list[dict[str, object]]
    image_row: dict[str, object]
    coco: dict | None  # None when the run writes no COCO file
    review: ReviewOffer | None  # None when the run writes no review sheets

    @property
    def n_particles(self) -> int:
        return len(self.particle_rows)

    def named(self, image: str) -> ImageRecord:
        """The same record with its image named `image` (the input path as the user gave it, where a
        worker read the file under its absolute path)."""
        rows = [{**r, "image": image} for r in self.particle_rows]
        coco = None if self.coco is None else {**self.coco, "image": {**self.coco["image"], "source": image}}
        return ImageRecord((image, self.key[1]), rows, {**self.image_row, "image": image}, coco, self.review)


def write_image_files(result: ImageResult, output_dir: str | os.PathLike, options: ReportOptions) -> list[Path]:
    """Write `instances/`, `phases/` and `overlays/` of one image, each under a temporary name then
    renamed, so a file under its real name is always whole (a killed worker leaves none half-written)."""
    written = []
    if options.write_instances:
        written.append(write_instances(result, output_dir))
    if options.write_phases:
        written.append(write_phases(result, output_dir))
    if options.write_overlays:
        written.append(write_overlay(result, output_dir, options.overlay_max_px, options.overlay_ids, options))
    return written


def make_record(
    result: ImageResult,
    options: ReportOptions,
    input_root: str | os.PathLike | None = None,
    review_thresholds: Mapping[str, float] | None = None,
) -> ImageRecord:
    """The record of one image; review thumbnails only for particles ranked below `review_thresholds`
    (`ReviewSampler.thresholds` of the writer; None: all counted particles)."""
    return ImageRecord(
        key=image_key(result),
        particle_rows=[particle_row(result, p) for p in result.particles],
        image_row=image_row(result),
        coco=image_record(result, input_root) if options.write_coco else None,
        review=offer_particles(result, options, review_thresholds) if options.write_review else None,
    )


__all__ = ["INSTANCES_DIR", "PHASES_DIR", "ImageRecord", "make_record", "write_image_files", "write_instances",
           "write_phases"]
