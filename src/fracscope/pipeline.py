"""Bulk inference: SEM images → particle instances → phase maps → per-particle measurements and class → report.

`run(cfg)` is what `infer.py` calls: it reads the settings once, finds the inputs, loads the
models, has every image analysed (`fracscope.analysis`, the same sentence for one image) here or on
a Dask cluster (`executor`), and writes the report (`fracscope.report.ReportWriter`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fracscope import __version__
from fracscope.analysis import (
    CLASSIFY_ROUTES,
    SEGMENTERS,
    AnalysisSettings,
    Models,
    Predicted,
    StageTimes,
    image_stem,
    measure_particles,
    predict_particles,
)
from fracscope.assets import resolve_input
from fracscope.cli import UsageError
from fracscope.detect import detector_factory
from fracscope.detect.learned import ImplausiblePixelSize
from fracscope.executor import ExecutorSettings
from fracscope.io import SUPPORTED_SUFFIXES, FoundFiles, ReadFailure, find_image_files, iter_images
from fracscope.io.groups import group_for, load_group_map, match_group_map
from fracscope.io.read import has_glob
from fracscope.locate import LocateFailure, locate_ahead
from fracscope.mosaic import MosaicPage, analyse_mosaic, as_mosaic, mosaic_detector
from fracscope.ort_options import int8_kernels_exact
from fracscope.phases import resolve_pore_weight
from fracscope.polarity import check_pore_polarity_setting
from fracscope.progress import RunProgress
from fracscope.report import ReportOptions, ReportWriter
from fracscope.report.lock import OutputLock
from fracscope.report.resume import RunLog
from fracscope.report.tables import done_images, source_identity
from fracscope.settings import settings_from_config
from fracscope.types import ImageResult, SEMImage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """Everything `run` reads from the `infer` config (conf/infer.yaml), read once at the top.

    The config is flat: the `AnalysisSettings` keys sit beside these. `detect` is the
    detector group as a plain mapping (``_target_`` or ``name`` plus the detector's
    arguments), its keys checked against the detector; it travels to the detect workers.
    """

    input: str | None = None  # None: the built-in sample data
    output: str = "outputs/infer"
    model_path: str | None = None  # the crop model; None: the shipped default
    phase_model_path: str | None = None  # the native-resolution phase model; None: the shipped default
    section_model_path: str | None = None  # the section net (classify=native); None: the shipped default
    backend: str = "onnx"
    device: str = "cpu"
    decode_threads: int = 2
    detect_workers: int = 1
    pixel_size_um: float | None = None  # overrides every tag in the files
    crop_data_bar: bool = True
    groups_csv: str | None = None
    groups_csv_strict: bool = True  # a groups_csv that misses inputs or names unknown files stops the run
    # true: skip images done in output/ (same resolved path, size and mtime), refused when the
    # settings that change results differ from the earlier run's; "force": go on anyway.
    resume: bool | str = field(default=False, metadata={"convert": lambda v: _resume_mode(v)})
    force_unlock: bool = False  # take over a lock another host holds on output/
    model_threads: int | None = None  # onnxruntime intra-op threads of the phase and crop models (None: all cores)
    executor: ExecutorSettings = ExecutorSettings()  # where images are analysed: here, or on a Dask cluster
    progress: bool = True  # stderr: a bar on a terminal, else a line per image (the log has the lines anyway)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings, metadata={"flatten": True})
    detect: Mapping[str, Any] = field(default_factory=lambda: {"name": "learned"})
    report: ReportOptions = ReportOptions()

    def __post_init__(self) -> None:
        # 0 would report every area as 0 µm², a negative or infinite size fails on every image, NaN
        # compares false with every size: refuse at start-up, in one line.
        px = self.pixel_size_um
        if px is not None and not (math.isfinite(px) and px > 0):
            raise ValueError(f"pixel_size_um must be a positive, finite number of µm per pixel, got {px}")

    @classmethod
    def from_config(cls, cfg: Any) -> RunSettings:
        """From the composed `infer` config (DictConfig or mapping).

        Raises
        ------
        fracscope.settings.SettingsError
            On an unknown key (the detect group's included) or a value that does not fit.
        """
        settings = settings_from_config(cls, cfg, "the infer config")
        detector_factory(settings.detect, "the infer config's detect group")
        return settings

    def result_settings(self, model_sha256: str, phase_model_sha256: str | None = None,
                        section_model_sha256: str | None = None) -> dict[str, Any]:
        """The settings that change results: a resume must match the earlier run's (runs.jsonl)."""
        a = self.analysis
        return {
            "model_sha256": model_sha256,
            "phase_model_sha256": phase_model_sha256,
            "section_model_sha256": section_model_sha256,
            "detect": dict(self.detect),
            "segmenter": a.segmenter,
            "classify": a.classify,
            "pixel_size_um": self.pixel_size_um,
            "crop_data_bar": self.crop_data_bar,
            "pore_polarity": a.pore_polarity,
            "even_illumination": a.even_illumination,
            "pore_weight": a.pore_weight,
            "trim_rim": a.trim_rim,
            "pore_count": a.pore_count,
            "remove_curtains": a.remove_curtains,
            "low_confidence": a.low_confidence,
            "min_judge_diameter_um": a.min_judge_diameter_um,
            "min_judge_diameter_px": a.min_judge_diameter_px,
        }


def no_pixel_size_message(source: object, estimate_um: float | None) -> str:
    """The run's one warning about images without a pixel size."""
    if estimate_um is None:
        return f"{source} has no pixel size: lengths are reported in pixels (length_unit=px)"
    return (f"{source} has no pixel size: estimated {estimate_um:.3g} µm/px from the image (images.csv "
            "pixel_size_estimate_um), detected at that scale; lengths are reported in pixels (length_unit=px)")


def input_root(spec: str) -> Path | None:
    """The folder that groups and output names are relative to: the input folder, or a glob's fixed prefix."""
    path = Path(spec)
    if path.is_dir():
        return path
    fixed = []
    for part in path.parts:
        if has_glob(part):
            return Path(*fixed) if fixed else Path(".")
        fixed.append(part)
    return path.parent


def _resume_mode(value: object) -> bool | str:
    """infer.py's `resume`: true, false or "force"."""
    if isinstance(value, bool) or value == "force":
        return value  # type: ignore[return-value]
    raise ValueError(f"resume must be true, false or force, got {value!r}")


@dataclass
class RunOutcome:
    n_images: int
    n_particles: int
    failures: list[tuple[str, int, str]]
    seconds: dict[str, float]
    wall_s: float
    searched: str = ""  # what was searched for input images, for messages
    skipped_types: dict[str, int] = field(default_factory=dict)  # unsupported files passed over, by extension
    n_images_total: int = 0  # images in the output folder after the run (resumed runs' included)
    n_retried: int = 0  # images run again because their worker died (executor=dask)

    @property
    def all_failed(self) -> bool:
        """Every image failed: no image in the outputs, at least one failure."""
        return bool(self.failures) and self.n_images_total == 0

    @property
    def exit_code(self) -> int:
        """0: all done; 1: some images failed; 2: every image failed (nothing to report)."""
        return 2 if self.all_failed else 1 if self.failures else 0

    def skipped_note(self) -> str:
        """``3 files skipped (2 .bmp, 1 .dm4)``, or "" when none was."""
        if not self.skipped_types:
            return ""
        return f"{sum(self.skipped_types.values())} files skipped ({_describe_counts(self.skipped_types)})"


def _extension(path: Path) -> str:
    return path.suffix.lower() or "(no extension)"


def _by_extension(files: list[Path]) -> dict[str, int]:
    """How many of `files` have each extension."""
    return dict(Counter(_extension(f) for f in files))


def _describe_counts(counts: dict[str, int]) -> str:
    """``2 .bmp, 1 .dm4``: the most frequent first, ties by name."""
    return ", ".join(f"{n} {ext}" for ext, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _searched(input_spec: str) -> str:
    """What `find_image_files` looked for, in words, for one-line messages."""
    path = Path(input_spec)
    wanted = "/".join(sorted(SUPPORTED_SUFFIXES))
    if path.is_dir():
        return f"{wanted} files under {input_spec}"
    if has_glob(input_spec):
        return f"{wanted} files matching {input_spec}"
    return input_spec


def _check_found(found: FoundFiles, input_spec: str) -> None:
    """No input images is a usage mistake, said in one line, before any output is written."""
    if found.files:
        return
    others = _by_extension(found.unsupported)
    seen = f"; found only {_describe_counts(others)}" if others else ""
    raise UsageError(f"no input images: nothing found for {_searched(input_spec)}{seen}")


def _check_groups(group_map: dict[str, str], found: FoundFiles, root: Path | None, settings: RunSettings) -> None:
    """A groups CSV that names unknown files, or misses inputs, stops the run unless groups_csv_strict=false."""
    mismatch = match_group_map(group_map, found.files, root)
    if not mismatch:
        return
    message = f"groups_csv {settings.groups_csv} does not match the inputs: {mismatch.describe()}"
    if settings.groups_csv_strict:
        raise UsageError(f"{message} (groups_csv_strict=false runs anyway; unlisted files take their folder's group)")
    log.warning(message)  # on stderr too: infer.py's console handler (conf/infer.yaml)


def _log_settings(cfg: DictConfig | RunSettings) -> None:
    """The run's settings, one block at the top of infer.log."""
    if isinstance(cfg, RunSettings):
        text = json.dumps(dataclasses.asdict(cfg), indent=2, default=str)
    else:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    log.info("settings:\n%s", text.rstrip())


def run(cfg: DictConfig | RunSettings) -> RunOutcome:
    """Analyse every image under `cfg.input` and write the report into `cfg.output`.

    `cfg` is the composed `infer` config, read once into `RunSettings` here (or those settings).
    One run at a time per output folder: its lock is held until the run ends.
    """
    run_settings = cfg if isinstance(cfg, RunSettings) else RunSettings.from_config(cfg)
    with OutputLock(run_settings.output, force_unlock=run_settings.force_unlock):
        return _run(cfg, run_settings)


def _cluster(executor: ExecutorSettings):
    """A context that gives a Dask client for ``executor=dask`` (one line and exit 2 when its scheduler
    cannot be reached, before any output is written), and None for ``executor=local``."""
    if executor.name != "dask":
        return contextlib.nullcontext()
    from fracscope.executor.dask import connected

    return connected(executor)


def _run(cfg: DictConfig | RunSettings, run_settings: RunSettings) -> RunOutcome:
    settings = run_settings.analysis
    if settings.segmenter not in SEGMENTERS:
        raise ValueError(f"segmenter must be one of {list(SEGMENTERS)}, got {settings.segmenter!r}")
    if settings.classify not in CLASSIFY_ROUTES:
        raise ValueError(f"classify must be one of {list(CLASSIFY_ROUTES)}, got {settings.classify!r}")
    models = Models.for_settings(settings, run_settings)
    # A bad override (or crop model weight) fails here, not per image, and on every route, not only crops.
    resolve_pore_weight(models.crops.metadata if models.crops is not None else None, settings.pore_weight)
    check_pore_polarity_setting(settings.pore_polarity)
    input_spec = resolve_input(run_settings.input)
    if not has_glob(input_spec) and not Path(input_spec).exists():
        raise FileNotFoundError(f"input not found: {input_spec}")
    root = input_root(input_spec)
    found = find_image_files(input_spec)
    _check_found(found, input_spec)
    group_map = load_group_map(run_settings.groups_csv) if run_settings.groups_csv else None
    if group_map is not None:
        _check_groups(group_map, found, root, run_settings)
    with _cluster(run_settings.executor) as client:
        return _report(cfg, run_settings, models, input_spec, found, root, group_map, client)


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _report(cfg: DictConfig | RunSettings, run_settings: RunSettings, models: Models, input_spec: str,
            found: FoundFiles, root: Path | None, group_map: dict[str, str] | None, client: Any) -> RunOutcome:
    """Analyse `found`'s images here (client None) or on the Dask cluster of `client`; write the report."""
    _log_settings(cfg)
    output = Path(run_settings.output)
    provenance = {
        "fracscope_version": __version__,
        "model_path": str(models.crops.path) if models.crops is not None else None,
        "model_sha256": models.crops.sha256 if models.crops is not None else None,
        "model_metadata": models.crops.metadata.to_dict() if models.crops is not None else None,
        "phase_model_path": str(models.phases.model_path) if models.phases is not None else None,
        "phase_model_sha256": models.phases.sha256 if models.phases is not None else None,
        "phase_model_metadata": json.loads(models.phases.metadata.to_json()) if models.phases is not None else None,
        "section_model_path": str(models.sections.model_path) if models.sections is not None else None,
        "section_model_sha256": models.sections.sha256 if models.sections is not None else None,
        "input": input_spec,
        "command": " ".join(sys.argv),
        "onnxruntime_version": _onnxruntime_version(),
        # Where fused int8 kernels saturate, int8 graphs run in their reference form (ort_options).
        "int8_kernels": "fused" if int8_kernels_exact() else "reference",
    }
    # The config as given is stored verbatim in the provenance; the settings come from run_settings.
    config = dataclasses.asdict(cfg) if isinstance(cfg, RunSettings) else cfg
    resume = bool(run_settings.resume)
    run_log = RunLog(
        output,
        run_settings.result_settings(provenance["model_sha256"], provenance["phase_model_sha256"],
                                     provenance["section_model_sha256"]),
        run_settings.resume,
        provenance["command"],
        has_results=resume and bool(done_images(output)),
    )
    writer = ReportWriter(output, config, provenance, resume=resume, options=run_settings.report, run_log=run_log,
                          input_root=root)
    done = writer.done_sources() if resume else {}
    for path in found.unsupported:
        writer.add_skipped(str(path), f"unsupported format {_extension(path)}")
    times = StageTimes()
    t_start = time.perf_counter()
    progress = RunProgress(len(found.files), enabled=run_settings.progress)
    batch = _Batch(found.files, run_settings, models, root, group_map, writer, done, progress, times)
    n_images, n_particles, n_skipped = _analyse_here(batch) if client is None else _analyse_on_dask(batch, client)
    if writer.nothing_new():  # a resume with nothing left to do: every output stays as it was
        writer.close_unchanged()
        log.info("nothing left to do in %s: %d image(s) already done", output, n_skipped)
        return RunOutcome(0, 0, [], times.seconds, time.perf_counter() - t_start)
    t = time.perf_counter()
    writer.close()
    times.add("write", t)
    wall = time.perf_counter() - t_start
    skipped_types = _by_extension(found.unsupported)
    outcome = RunOutcome(
        n_images, n_particles, list(writer.failures), times.seconds, wall,
        _searched(input_spec), skipped_types, len(writer.done), progress.n_retried,
    )
    _write_timings(output, outcome, n_skipped)
    log.info(
        "done: %d particles in %d images, %d failed, %.1f s%s",
        n_particles, n_images, len(outcome.failures), wall, f"; {outcome.skipped_note()}" if skipped_types else "",
    )
    return outcome


@dataclass
class _Batch:
    """A run's images and what analysing them needs, on either executor."""

    files: list[Path]
    settings: RunSettings
    models: Models  # loaded here (a Dask run loads them again on each worker)
    root: Path | None
    group_map: dict[str, str] | None
    writer: ReportWriter
    done: dict  # resume: (resolved path, page) -> (size, mtime_ns) of the images done earlier
    progress: RunProgress
    times: StageTimes


def _analyse_here(batch: _Batch) -> tuple[int, int, int]:
    """``executor=local``: decode ahead in threads, detect ahead in `detect_workers` processes, run the
    models here and measure and write on a background thread; (images, particles, resumed pages skipped)."""
    files, run_settings, models, root, group_map = batch.files, batch.settings, batch.models, batch.root, batch.group_map
    writer, done, progress, times = batch.writer, batch.done, batch.progress, batch.times
    settings = run_settings.analysis
    skipped: list[SEMImage] = []
    tiled = mosaic_detector(run_settings.detect)
    sources = iter_images(
        files,
        pixel_size_um=run_settings.pixel_size_um,
        crop_bar=run_settings.crop_data_bar,
        n_threads=run_settings.decode_threads,
    )
    todo = (
        as_mosaic(todo_item, tiled, settings.pore_polarity)
        for item in _timed(sources, times, "decode")
        if (todo_item := _not_done(item, done, skipped)) is not None
    )
    located_stream = locate_ahead(
        todo,
        run_settings.detect,
        models.crop_spec,
        workers=run_settings.detect_workers,
        pore_polarity=settings.pore_polarity,
        even_illumination=settings.even_illumination,
    )
    warned_scale = False
    # In input order, image i is measured and written on two threads while the model runs on
    # image i + 1 (onnxruntime, zlib, PNG encoding and most numpy work release the GIL).
    out_queue = _WriteQueue(writer, times, max_pending=2)
    for item in _timed(located_stream, times, "wait"):
        progress.skip(len(skipped) - progress.n_resumed)  # images resume passed over since the last one
        if isinstance(item, ReadFailure):
            log.error("could not read %s: %s", item.source, item.error)
            out_queue.failure(str(item.source), 0, item.error)  # a file that cannot be opened fails whole
            progress.step(str(item.source), out_queue.n_particles, "failed")
            continue
        if isinstance(item, LocateFailure):
            log.error("detection failed on %s page %d: %s", item.image.source, item.image.page, item.error)
            out_queue.failure(str(item.image.source), item.image.page, item.error)
            progress.step(_page_name(item.image), out_queue.n_particles, "failed")
            continue
        image = item.image
        if image.pixel_size_um is None and not warned_scale:
            log.warning("%s", no_pixel_size_message(image.source, image.estimated_pixel_size_um))
            warned_scale = True
        stem, group = image_stem(image, root), group_for(image.source, root, group_map)
        try:
            if isinstance(item, MosaicPage):
                out_queue.add_result(analyse_mosaic(item, tiled, models, settings, stem, group, times))
            else:
                for stage, seconds in item.seconds.items():
                    times.seconds[stage] += seconds
                out_queue.add(predict_particles(item, stem, group, models, settings, times), settings)
        except Exception as exc:  # one bad image must not stop a run over thousands
            if isinstance(exc, ImplausiblePixelSize):  # the message says it all: no traceback
                log.error("failed on %s page %d: %s", image.source, image.page, exc)
            else:
                log.exception("failed on %s page %d", image.source, image.page)
            out_queue.failure(str(image.source), image.page, f"{type(exc).__name__}: {exc}")
            progress.step(_page_name(image), out_queue.n_particles, "failed")
            continue
        progress.step(_page_name(image), out_queue.n_particles)
    progress.close()
    out_queue.drain()
    return out_queue.n_images, out_queue.n_particles, len(skipped)


def _analyse_on_dask(batch: _Batch, client: Any) -> tuple[int, int, int]:
    """``executor=dask``: one task per file on the cluster, its records committed here in input order
    (`fracscope.executor.dask`); (images, particles, resumed pages skipped)."""
    files, run_settings, root, group_map = batch.files, batch.settings, batch.root, batch.group_map
    writer, done, progress, times = batch.writer, batch.done, batch.progress, batch.times
    from fracscope.executor.dask import analyse_on_dask
    from fracscope.executor.work import FileTask, ImageFailure

    counts = {"images": 0, "particles": 0, "skipped": 0}
    times.seconds.setdefault("worker", 0.0)
    times.seconds.setdefault("worker_slot", 0.0)
    warned_scale = False

    # The resume keys by file, once: looking each file's pages up in the whole list would cost files x done.
    done_by_path: dict[str, dict[int, tuple]] = {}
    for (path, page), identity in done.items():
        done_by_path.setdefault(path, {})[page] = identity

    def tasks():
        for f in files:
            path, size, mtime = source_identity(f)
            earlier = done_by_path.get(path, {})
            if any(identity != (size, mtime) for identity in earlier.values()):
                _warn_changed(f)
            yield FileTask(str(f), path, group_for(f, root, group_map), frozenset(earlier))

    def on_outcome(task, outcome, retried: int) -> None:
        nonlocal warned_scale
        for stage, seconds in outcome.seconds.items():
            times.seconds[stage] += seconds
        times.seconds["worker"] += outcome.wall_s
        times.seconds["worker_slot"] += outcome.slot_s
        progress.retried(retried)
        progress.skip(outcome.n_skipped)
        counts["skipped"] += outcome.n_skipped
        for item in outcome.items:
            if isinstance(item, ImageFailure):
                log.error("failed on %s page %d: %s", item.source, item.page, item.error)
                writer.add_failure(item.source, item.page, item.error)
                progress.step(f"{item.source} page {item.page}" if item.page else item.source, counts["particles"],
                              "failed")
                continue
            if item.image_row["pixel_size_um"] is None and not warned_scale:
                log.warning("%s", no_pixel_size_message(task.source, item.image_row["pixel_size_estimate_um"]))
                warned_scale = True
            if writer.add_record(item):
                counts["images"] += 1
                counts["particles"] += item.n_particles
            progress.step(f"{item.key[0]} page {item.key[1]}" if item.key[1] else item.key[0], counts["particles"])

    analyse_on_dask(client, tasks(), run_settings, root, writer.review_thresholds, on_outcome)
    progress.close()
    return counts["images"], counts["particles"], counts["skipped"]


class _WriteQueue:
    """Hands predictions (to measure, then write) and failures to two background threads, in order.

    One thread measures image i + 1 while the other writes image i (PNG and TIFF encoding release
    the GIL), so the measuring is not held up by the files. At most `max_pending` images wait, so
    memory stays bounded; `write` time is what the main thread spends waiting for them. Every
    writer call runs on the writing thread, so the report's files are never written concurrently.
    """

    def __init__(self, writer: ReportWriter, times: StageTimes, max_pending: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.writer, self.times, self.max_pending = writer, times, max_pending
        self.measure_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fracscope-measure")
        self.write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fracscope-write")
        self.pending: deque = deque()
        self.n_images = self.n_particles = 0

    def add(self, predicted: Predicted, settings: AnalysisSettings) -> None:
        measured = self.measure_pool.submit(self._measure, predicted, settings)
        self._submit(self._write_measured, measured)

    def add_result(self, result: ImageResult) -> None:
        """An image already measured (a mosaic analysed tile by tile): only written."""
        self._submit(self._write, result)

    def failure(self, source: str, page: int, message: str) -> None:
        self._submit(self.writer.add_failure, source, page, message)

    def drain(self) -> None:
        self._collect(0)
        self.measure_pool.shutdown()
        self.write_pool.shutdown()

    def _submit(self, fn, *args) -> None:
        self.pending.append(self.write_pool.submit(fn, *args))
        self._collect(self.max_pending)

    def _collect(self, keep: int) -> None:
        t = time.perf_counter()
        while self.pending and (len(self.pending) > keep or self.pending[0].done()):
            n = self.pending.popleft().result()
            if n is not None:
                self.n_images += 1
                self.n_particles += n
        self.times.add("write", t)

    def _measure(self, predicted: Predicted, settings: AnalysisSettings) -> ImageResult | tuple[str, int, str]:
        """One image measured, or (source, page, message) when that failed."""
        image = predicted.located.image
        try:
            return measure_particles(predicted, settings, self.times)
        except Exception as exc:  # one bad image must not stop a run over thousands
            log.exception("failed on %s page %d", image.source, image.page)
            return str(image.source), image.page, f"{type(exc).__name__}: {exc}"

    def _write_measured(self, measured) -> int | None:
        """Write one image once it is measured (the measuring thread's future); its particle count,
        or None when it failed."""
        result = measured.result()
        if isinstance(result, tuple):
            self.writer.add_failure(*result)
            return None
        return self._write(result)

    def _write(self, result: ImageResult) -> int | None:
        """Write one measured image; the particle count, or None when it failed."""
        try:
            self.writer.add(result)
        except Exception as exc:  # a full disk or an odd image must not stop the run
            image = result.image
            log.exception("writing failed on %s page %d", image.source, image.page)
            self.writer.add_failure(str(image.source), image.page, f"{type(exc).__name__}: {exc}")
            return None
        return len(result.particles)


def _page_name(image: SEMImage) -> str:
    return f"{image.source} page {image.page}" if image.n_pages > 1 else str(image.source)


def _timed(iterable, times: StageTimes, stage: str):
    """Yield from `iterable`, adding the time spent waiting for each item to `stage`."""
    it = iter(iterable)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        times.add(stage, t)
        yield item


def _not_done(item, done: dict, skipped: list):
    """`item` when it is still to do; None when a resumed run did it (same resolved path, page).

    A file changed since (size or mtime) keeps its earlier results, with a warning: analysing it
    again would put two versions of one image in the tables.
    """
    if isinstance(item, ReadFailure) or not done:
        return item
    path, size, mtime = source_identity(item.source)
    earlier = done.get((path, item.page))
    if earlier is None:
        return item
    if earlier != (size, mtime):
        _warn_changed(item.source)
    skipped.append(item)
    return None


def _warn_changed(source: str | Path) -> None:
    """A resumed file changed since an earlier run did it: say so (its earlier results are kept)."""
    log.warning(
        "%s changed since an earlier run analysed it (size or mtime); its earlier results are kept: "
        "use another output= to analyse it again",
        source,
    )


def _write_timings(output: Path, outcome: RunOutcome, n_skipped: int) -> None:
    """timings.json: where the time went, for benchmarks and for users tuning a run."""
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    payload = {
        "n_images": outcome.n_images,
        "n_images_skipped_resume": n_skipped,
        "n_particles": outcome.n_particles,
        "n_failed": len(outcome.failures),
        "n_retried": outcome.n_retried,
        "wall_s": outcome.wall_s,
        "particles_per_s": outcome.n_particles / max(outcome.wall_s, 1e-9),
        "stage_s": outcome.seconds,
        "peak_rss_mb": peak_rss_mb,
        # the largest finished child (detect workers); the run's total is at most the sum
        "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }
    (output / "timings.json").write_text(json.dumps(payload, indent=2) + "\n")
