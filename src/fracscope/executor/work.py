"""One task of a distributed run: every page of one image file, analysed where the task runs.

A worker builds the detector and loads the models once (`_stage`, a per-process cache keyed by the
settings), then does for each page what the local run does: locate → models → measure, writes the
page's large files into the shared output folder and returns its small `ImageRecord`. A mosaic
(``detect=tiled``, larger than one tile) is analysed as tiles (`fracscope.mosaic`): each tile is a
task of its own on any worker, and this task puts the pieces together.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from fracscope.analysis import Models, StageTimes, image_stem, measure_particles, predict_particles
from fracscope.detect import Detector, build_detector
from fracscope.detect.tiling import Tile
from fracscope.io import ReadFailure
from fracscope.io.read import ReadOptions, load_file
from fracscope.locate import LocateFailure, locate_safely
from fracscope.mosaic import MosaicPage, TilePiece, analyse_mosaic, analyse_tile, as_mosaic
from fracscope.report.record import ImageRecord, make_record, write_image_files
from fracscope.types import SEMImage


@dataclass(frozen=True)
class FileTask:
    """One input file to analyse."""

    source: str  # the path as found (the tables' `image` column)
    path: str  # absolute, as the client resolved it: workers may run in another folder
    group: str
    done_pages: frozenset[int] = frozenset()  # pages an earlier run finished (resume)
    review_thresholds: dict[str, float] | None = None  # the writer's when the task was sent


@dataclass(frozen=True)
class ImageFailure:
    """A file or page that failed, as errors.csv records it."""

    source: str
    page: int
    error: str


@dataclass
class FileOutcome:
    """What a task sends back: a record or a failure per page, in page order."""

    items: list[ImageRecord | ImageFailure] = field(default_factory=list)
    n_skipped: int = 0  # pages done by an earlier run
    seconds: dict[str, float] = field(default_factory=dict)  # stage times, as the local run's
    wall_s: float = 0.0  # the task's time on its worker, from start to return


_stages: dict[str, tuple[Detector, Models]] = {}  # per worker process: settings -> (detector, models)
_stages_lock = threading.Lock()


def _stage(run) -> tuple[Detector, Models]:
    """The detector and models for `run` (a `RunSettings`), built once per worker process."""
    # Only what the networks depend on: runs that differ in their output folder share the loaded models.
    needs = {k: getattr(run, k) for k in ("detect", "phase_model_path", "model_path", "backend", "device",
                                         "model_threads")}
    key = json.dumps({**needs, "analysis": dataclasses.asdict(run.analysis)}, sort_keys=True, default=str)
    with _stages_lock:
        if key not in _stages:
            _stages.clear()  # a worker serves one run's settings at a time
            _stages[key] = (build_detector(run.detect), Models.for_settings(run.analysis, run))
        return _stages[key]


def analyse_file(task: FileTask, run, input_root: str | None) -> FileOutcome:
    """Analyse every page of `task`'s file with `run`'s settings (a `RunSettings` whose `output` and
    `input_root` are absolute); large files go to the output folder, records come back."""
    t_task = time.perf_counter()
    detector, models = _stage(run)
    times = StageTimes()
    outcome = FileOutcome()
    t = time.perf_counter()
    pages = load_file(task.path, ReadOptions(run.pixel_size_um, None, run.crop_data_bar))
    times.add("decode", t)
    root = Path(input_root) if input_root is not None else None
    for item in pages:
        if isinstance(item, ReadFailure):  # a file that cannot be opened fails whole
            outcome.items.append(ImageFailure(task.source, 0, item.error))
            continue
        if item.page in task.done_pages:
            outcome.n_skipped += 1
            continue
        image: SEMImage = dataclasses.replace(item, source=task.path)
        stem = image_stem(image, root)
        page = as_mosaic(image, detector)  # itself when the detector is not tiled or one tile holds it
        located = locate_safely(image, detector, models.crop_spec) if page is image else page
        if isinstance(located, LocateFailure):
            outcome.items.append(ImageFailure(task.source, image.page, located.error))
            continue
        try:
            if isinstance(located, MosaicPage):  # its tiles go to the cluster's workers, this task waits
                result = analyse_mosaic(located, detector, models, run.analysis, stem, task.group, times,
                                        run_tiles=partial(_tiles_on_cluster, run=run, stem=stem, group=task.group))
            else:
                for stage, seconds in located.seconds.items():
                    times.seconds[stage] += seconds
                predicted = predict_particles(located, stem, task.group, models, run.analysis, times)
                result = measure_particles(predicted, run.analysis, times)
            t = time.perf_counter()
            write_image_files(result, run.output, run.report)
            record = make_record(result, run.report, input_root, task.review_thresholds)
            times.add("write", t)
        except Exception as exc:  # one bad image must not stop a run over thousands
            outcome.items.append(ImageFailure(task.source, image.page, f"{type(exc).__name__}: {exc}"))
            continue
        outcome.items.append(record.named(task.source))
    outcome.seconds = dict(times.seconds)
    outcome.wall_s = time.perf_counter() - t_task
    return outcome


def analyse_tile_task(window: SEMImage, tile: Tile, run, stem: str, group: str) -> TilePiece:
    """One tile of a mosaic, on whichever worker the scheduler picks (models loaded once there too)."""
    detector, models = _stage(run)
    return analyse_tile(window, tile, detector.detector, models, run.analysis, stem, group)


def _tiles_on_cluster(jobs: Iterator[tuple[SEMImage, Tile]], run, stem: str, group: str) -> list[TilePiece]:
    """Send each tile window straight to a worker (not through the scheduler) and gather the pieces; the
    waiting task leaves its worker thread free meanwhile (`worker_client` secedes)."""
    from distributed import worker_client

    with worker_client() as client:
        futures = [client.submit(analyse_tile_task, client.scatter(window), tile, run, stem, group, pure=False)
                   for window, tile in jobs]
        return client.gather(futures)


__all__ = ["FileOutcome", "FileTask", "ImageFailure", "analyse_file", "analyse_tile_task"]
