"""One task of a distributed run: every page of one image file, analysed where the task runs.

A worker builds the detector and loads the models once (`_stage`, a per-process cache keyed by the
settings), then does for each page what the local run does: locate → models → measure, writes the
page's large files into the shared output folder and returns its small `ImageRecord`. A mosaic
(``detect=tiled``, larger than one tile) is analysed as tiles (`fracscope.mosaic`): each tile is a
task of its own on any worker, and this task puts the pieces together.

On a Dask worker a page hands its thread slot on once its networks are done (`_SlotHandoff`): the task
secedes and measures and writes the page on its own thread while the worker's next task runs its
networks, as the local executor's writer thread overlaps image i's measuring with image i + 1's model.
The task still returns only after its files are on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
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
from fracscope.types import ImageResult, SEMImage


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
    # the part of it that held a worker thread slot: without the measuring and writing done after it
    # seceded (`_SlotHandoff`), which overlap the worker's next task
    slot_s: float = 0.0


_stages: dict[str, tuple[Detector, Models]] = {}  # per worker process: settings -> (detector, models)
_stages_lock = threading.Lock()
# glibc's mallopt parameters, and the largest thresholds its adaptive mode reaches on 64-bit Linux.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ADAPTIVE_MMAP_MAX_BYTES = 32 << 20


def keep_large_arrays_on_the_heap() -> bool:
    """In a worker started with MALLOC_TRIM_THRESHOLD_ set (Dask's nanny sets 65536), give glibc back the
    thresholds its adaptive mode would reach, so numpy temporaries of up to 32 MiB are not mmapped and unmapped
    each time (measured: docs/BENCHMARKS.md, issue 20). True when applied; a no-op elsewhere."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _ADAPTIVE_MMAP_MAX_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _ADAPTIVE_MMAP_MAX_BYTES))


def _stage(run) -> tuple[Detector, Models]:
    """The detector and models for `run` (a `RunSettings`), built once per worker process."""
    # Only what the networks depend on: runs that differ in their output folder share the loaded models.
    needs = {k: getattr(run, k) for k in ("detect", "phase_model_path", "section_model_path", "model_path", "backend", "device",
                                         "model_threads")}
    key = json.dumps({**needs, "analysis": dataclasses.asdict(run.analysis)}, sort_keys=True, default=str)
    with _stages_lock:
        if key not in _stages:
            if not _stages:  # the worker's first run
                keep_large_arrays_on_the_heap()
            _stages.clear()  # a worker serves one run's settings at a time
            _stages[key] = (build_detector(run.detect), Models.for_settings(run.analysis, run))
        return _stages[key]


def analyse_file(task: FileTask, run, input_root: str | None) -> FileOutcome:
    """Analyse every page of `task`'s file with `run`'s settings (a `RunSettings` whose `output` and
    `input_root` are absolute); large files go to the output folder, records come back."""
    t_task = time.perf_counter()
    handoff = _SlotHandoff.here()
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
        handoff.reclaim()  # a page's networks run in a worker thread slot (after a page that handed it on)
        image: SEMImage = dataclasses.replace(item, source=task.path)
        stem = image_stem(image, root)
        # Itself when the detector is not tiled or one tile holds it.
        page = as_mosaic(image, detector, run.analysis.pore_polarity)
        located = (locate_safely(image, detector, models.crop_spec, run.analysis.pore_polarity,
                                 run.analysis.even_illumination) if page is image else page)
        if isinstance(located, LocateFailure):
            outcome.items.append(ImageFailure(task.source, image.page, located.error))
            continue
        try:
            if isinstance(located, MosaicPage):  # its tiles go to the cluster's workers, this task waits
                # Not handed on: the next task could assemble a whole mosaic too, and a worker's memory
                # is bounded by one mosaic's maps.
                result = analyse_mosaic(located, detector, models, run.analysis, stem, task.group, times,
                                        run_tiles=partial(_tiles_on_cluster, run=run, stem=stem, group=task.group))
                record = _write(result, run, input_root, task, times)
            else:
                for stage, seconds in located.seconds.items():
                    times.seconds[stage] += seconds
                predicted = predict_particles(located, stem, task.group, models, run.analysis, times)
                with handoff.measuring():  # the networks are done: the next task may run its own
                    result = measure_particles(predicted, run.analysis, times)
                    record = _write(result, run, input_root, task, times)
        except Exception as exc:  # one bad image must not stop a run over thousands
            outcome.items.append(ImageFailure(task.source, image.page, f"{type(exc).__name__}: {exc}"))
            continue
        outcome.items.append(record.named(task.source))
    outcome.seconds = dict(times.seconds)
    t_end = time.perf_counter()
    outcome.wall_s = t_end - t_task
    outcome.slot_s = outcome.wall_s - handoff.off_slot_s(t_end)
    return outcome


def _write(result: ImageResult, run, input_root: str | None, task: FileTask, times: StageTimes) -> ImageRecord:
    """The page's large files into the output folder (temporary name, then renamed); its small record."""
    t = time.perf_counter()
    write_image_files(result, run.output, run.report)
    record = make_record(result, run.report, input_root, task.review_thresholds)
    times.add("write", t)
    return record


_measure_slots: threading.BoundedSemaphore | None = None  # per worker process: pages measured off-slot at once


class _SlotHandoff:
    """Hands a task's worker thread slot on while it measures and writes a page, on a Dask worker.

    `measuring()` waits (still in its slot) until fewer pages than the worker has threads are being
    measured off-slot, then secedes (`distributed.secede`): the worker starts its next queued task, whose
    networks overlap this page's measuring and writing on this thread. So a worker thread holds at most
    one more image (the one measured) than without. `reclaim()` rejoins the pool before another page's
    networks (multi-page files); the task returns, with its files on disk, whenever it is done.
    Off a worker (the local executor, a direct call) both do nothing.
    """

    def __init__(self, nthreads: int | None) -> None:
        self.nthreads = nthreads  # None: not on a Dask worker
        self.seceded = False
        self.off_s = 0.0  # seconds spent seceded before the last rejoin
        self._t_seceded = 0.0

    @classmethod
    def here(cls) -> _SlotHandoff:
        try:
            from distributed import get_worker

            return cls(get_worker().state.nthreads)
        except (ImportError, ValueError):  # no distributed, or not in a worker's task
            return cls(None)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        if self.nthreads is None:
            yield
            return
        global _measure_slots
        from distributed import secede

        with _stages_lock:
            if _measure_slots is None:
                _measure_slots = threading.BoundedSemaphore(self.nthreads)
            slots = _measure_slots
        with slots:
            if not self.seceded:
                secede()
                self.seceded, self._t_seceded = True, time.perf_counter()
            yield

    def reclaim(self) -> None:
        if self.seceded:
            from distributed import rejoin

            rejoin()  # waits for a free slot
            self.seceded = False
            self.off_s += time.perf_counter() - self._t_seceded

    def off_slot_s(self, t_end: float) -> float:
        """Seconds the task spent seceded, up to `t_end` (a `time.perf_counter` reading)."""
        return self.off_s + (t_end - self._t_seceded if self.seceded else 0.0)


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
