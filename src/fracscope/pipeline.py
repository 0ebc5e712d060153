"""Bulk inference: SEM image → particle instances → phase maps → per-particle measurements and class → report.

`run(cfg)` is what `infer.py` calls; `analyse_image` is the same sentence for one image.
By default the phase maps come from the native-resolution phase model (`fracscope.phase_map`)
and the class from the crack measurements on them (`fracscope.classify`); the crop model
(``segmenter=crops``, ``classify=head|topology``) and the paper's threshold
(``segmenter=threshold``) remain as options.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from omegaconf import DictConfig, OmegaConf

from fracscope import __version__
from fracscope.detect import Detector, detector_factory
from fracscope.assets import resolve_input, resolve_model, resolve_phase_model
from fracscope.cli import UsageError
from fracscope.io import SUPPORTED_SUFFIXES, FoundFiles, ReadFailure, find_image_files, iter_images, relative_source
from fracscope.locate import LocatedParticles, LocateFailure, locate_ahead, locate_particles
from fracscope.io.groups import group_for, load_group_map, match_group_map
from fracscope.io.read import has_glob
from fracscope.measure import measure_particle
from fracscope.measure.threshold import image_threshold, threshold_phases
from fracscope.classify import (
    HEAD_FEATURES,
    CrackClassifier,
    CrackRule,
    class_from_fragments,
    class_rule_from_dict,
    needs_head,
)
from fracscope.progress import RunProgress
from fracscope.phase_map import PhaseMapModel
from fracscope.phases import (
    CropPhases,
    ImagePhaseCodes,
    PhaseRule,
    check_polarity,
    codes_from_probs,
    particle_phases,
    phases_on_image_grid,
    predict_crops,
    resolve_pore_weight,
)
from fracscope.refine import RIM_TRIM_PHASES
from fracscope.report import ReportOptions, ReportWriter
from fracscope.report.lock import OutputLock
from fracscope.report.resume import RunLog
from fracscope.report.tables import done_images, source_identity
from fracscope.runtime import Backend, load_backend
from fracscope.settings import settings_from_config
from fracscope.types import CLASS_NAMES, ImageResult, ParticleResult, SEMImage

log = logging.getLogger(__name__)


SEGMENTERS = ("model", "crops", "threshold")
CLASSIFY_ROUTES = ("native", "head", "topology")


@dataclass(frozen=True)
class AnalysisSettings:
    """How one image is turned into particle results (from the `infer` config)."""

    batch_size: int = 64
    # "model": the native-resolution phase model | "crops": the crop model's maps pasted back (the earlier
    # route) | "threshold": the paper's Eq. 1 on an Otsu threshold
    segmenter: str = "model"
    # "native": the phase model file's class rule on the native crack measurements | "head": the crop
    # model's class head | "topology": the head corrected by crack-mask connectivity
    classify: str = "native"
    pore_polarity: str = "dark"
    low_confidence: float = 0.6  # flag particles whose top class probability is below this
    min_judge_diameter_um: float = 3.0  # smaller sections are flagged too_small
    min_judge_diameter_px: float = 40.0  # the same, when the pixel size is unknown
    keep_crops: bool = True  # keep crops on results for review contact sheets
    pore_weight: float | None = None  # pore probability factor on the source grid; None = the model's own
    # Mask-edge pixels the phase model calls one of these phases leave the particle (model segmenter only):
    # a key of `fracscope.refine.RIM_TRIM_PHASES` (the config also takes true and false).
    trim_rim: str = field(default="background", metadata={"convert": lambda v: _rim_trim_mode(v)})


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
    backend: str = "onnx"
    device: str = "cpu"
    decode_threads: int = 2
    detect_workers: int = 1
    pixel_size_um: float | None = None  # overrides every tag in the files
    crop_data_bar: bool = False
    groups_csv: str | None = None
    groups_csv_strict: bool = True  # a groups_csv that misses inputs or names unknown files stops the run
    # true: skip images done in output/ (same resolved path, size and mtime), refused when the
    # settings that change results differ from the earlier run's; "force": go on anyway.
    resume: bool | str = field(default=False, metadata={"convert": lambda v: _resume_mode(v)})
    force_unlock: bool = False  # take over a lock another host holds on output/
    progress: bool = True  # stderr: a bar on a terminal, else a line per image (the log has the lines anyway)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings, metadata={"flatten": True})
    detect: Mapping[str, Any] = field(default_factory=lambda: {"name": "learned"})
    report: ReportOptions = ReportOptions()

    def __post_init__(self) -> None:
        # 0 would report every area as 0 µm², a negative size fails on every image: refuse at start-up.
        if self.pixel_size_um is not None and not self.pixel_size_um > 0:
            raise ValueError(f"pixel_size_um must be a positive number of µm per pixel, got {self.pixel_size_um}")

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

    def result_settings(self, model_sha256: str, phase_model_sha256: str | None = None) -> dict[str, Any]:
        """The settings that change results: a resume must match the earlier run's (runs.jsonl)."""
        a = self.analysis
        return {
            "model_sha256": model_sha256,
            "phase_model_sha256": phase_model_sha256,
            "detect": dict(self.detect),
            "segmenter": a.segmenter,
            "classify": a.classify,
            "pixel_size_um": self.pixel_size_um,
            "crop_data_bar": self.crop_data_bar,
            "pore_polarity": a.pore_polarity,
            "pore_weight": a.pore_weight,
            "trim_rim": a.trim_rim,
            "low_confidence": a.low_confidence,
            "min_judge_diameter_um": a.min_judge_diameter_um,
            "min_judge_diameter_px": a.min_judge_diameter_px,
        }


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over the run.

    detect and crop run in worker processes when detect_workers > 0, overlapping the model:
    then the stages add up to more than the wall time, and `wait` is the main process idling
    for the workers. Particles are measured and outputs written on a background thread while
    the model runs on the next image: `measure` is that thread's measuring time, and `write`
    is the main process waiting for it (and the final summary, plots and sheets).
    """

    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("decode", "detect", "crop", "wait", "model", "measure", "write"), 0.0)
    )

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - t0
        return now


def _touches_border(bbox: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    r0, c0, r1, c1 = bbox
    return r0 == 0 or c0 == 0 or r1 == shape[0] or c1 == shape[1]


def _mask_box(mask: np.ndarray, origin: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(row0, col0, row1, col1), end-exclusive, of a window's mask in image pixels; None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return (origin[0] + int(rows[0]), origin[1] + int(cols[0]), origin[0] + int(rows[-1]) + 1,
            origin[1] + int(cols[-1]) + 1)


@dataclass(frozen=True)
class Models:
    """The networks a run uses: the phase model and/or the crop model, as the settings need them."""

    phases: PhaseMapModel | None = None  # segmenter=model or classify=native
    crops: Backend | None = None  # segmenter=crops or classify=head|topology
    class_rule: CrackRule | CrackClassifier | None = None  # the phase model file's, read once

    @classmethod
    def for_settings(cls, settings: AnalysisSettings, run: RunSettings | None = None) -> Models:
        """Load what `settings` need (model paths and device from `run`; shipped defaults without)."""
        run = run or RunSettings()
        phases = crops = class_rule = None
        if settings.segmenter == "model" or settings.classify == "native":
            phases = PhaseMapModel(resolve_phase_model(run.phase_model_path), device=run.device)
            class_rule = class_rule_from_dict(phases.metadata.class_rule)
        # A class rule that also reads the crop model's class head needs that model.
        head_for_rule = settings.classify == "native" and needs_head(class_rule)
        if settings.segmenter == "crops" or settings.classify in ("head", "topology") or head_for_rule:
            crops = load_backend(resolve_model(run.model_path), backend=run.backend, device=run.device)
        return cls(phases, crops, class_rule)

    @property
    def crop_spec(self):
        """The crop model's crop spec, or None when no crops are needed."""
        return self.crops.metadata.crop_spec if self.crops is not None else None


@dataclass
class Predicted:
    """One image's particles after the models: what `measure_particles` turns into results."""

    located: LocatedParticles
    stem: str
    group: str
    codes: ImagePhaseCodes | None  # the phase model's, on the image grid
    class_rule: CrackRule | CrackClassifier | None  # the phase model file's
    class_probs: np.ndarray | None  # (N, 3), the crop model's, in crop order
    phase_probs: np.ndarray | None  # (N, 4, S, S), the crop model's, on the crop grid
    pore_weight: float  # the crop model file's, or the run's override


def predict_particles(
    located: LocatedParticles,
    stem: str,
    group: str,
    models: Models,
    settings: AnalysisSettings,
    times: StageTimes,
) -> Predicted:
    """Phase codes of the whole image (native model) and/or class and phase probabilities of every crop."""
    t = time.perf_counter()
    codes = class_probs = phase_probs = None
    pore_weight = 1.0
    if models.phases is not None:
        image = located.image
        # Without a pixel size the image is taken to be at the model's working pixel size.
        px = image.pixel_size_um or models.phases.working_pixel_size_um
        codes = codes_from_probs(models.phases.predict(image.pixels, px)) if located.instances.any() else None
    if models.crops is not None:
        class_probs, phase_probs = predict_crops(models.crops, located.crops, settings.batch_size)
        pore_weight = resolve_pore_weight(models.crops.metadata, settings.pore_weight)
    times.add("model", t)
    return Predicted(located, stem, group, codes, models.class_rule, class_probs, phase_probs, pore_weight)


def measure_particles(predicted: Predicted, settings: AnalysisSettings, times: StageTimes) -> ImageResult:
    """Phases pasted back onto the image's own pixel grid, and every particle measured there."""
    located, stem, group = predicted.located, predicted.stem, predicted.group
    image, instances = located.image, located.instances
    t = time.perf_counter()
    trim = RIM_TRIM_PHASES[settings.trim_rim]
    rule = PhaseRule(predicted.pore_weight, trim)
    phases = np.zeros(instances.shape, np.uint8)
    grey_threshold = image_threshold(image.pixels, settings.pore_polarity) if settings.segmenter == "threshold" else None
    boxes = ndi.find_objects(instances)  # one pass: every particle's own bounding box
    particles: list[ParticleResult] = []
    px = image.pixel_size_um
    # The detector's size rule, applied again to the outline that is measured (trimmed, at full
    # resolution), so that no reported section is smaller than the minimum. Needs a pixel size.
    min_d = located.min_diameter_um if px else None
    crops = {c.particle_id: (i, c) for i, c in enumerate(located.crops)}
    for pid in (i + 1 for i, b in enumerate(boxes) if b is not None):
        rows, cols = boxes[pid - 1]
        box = (rows.start, cols.start, rows.stop, cols.stop)
        r0, c0, r1, c1 = box
        own = instances[r0:r1, c0:c1] == pid
        index, crop = crops.get(pid, (None, None))
        native = particle_phases(predicted.codes, box, own, trim) if predicted.codes is not None else None
        if settings.segmenter == "threshold":
            local = threshold_phases(image.pixels[r0:r1, c0:c1], own, settings.pore_polarity, grey_threshold)
        else:
            found = native if settings.segmenter == "model" else phases_on_image_grid(
                CropPhases(predicted.phase_probs[index], crop, box, own), rule)
            instances[r0:r1, c0:c1][own & ~found.mask] = 0  # the trimmed rim leaves the particle
            own, local = found.mask, found.phases
        m = measure_particle(own, local, px)
        if min_d and m["eq_diameter_um"] < min_d:
            instances[r0:r1, c0:c1][own] = 0  # its id stays unused
            continue
        phases[r0:r1, c0:c1][own] = local[own]
        if settings.classify == "native":
            evidence = dict(m if settings.segmenter == "model" else measure_particle(native.mask, native.phases, px))
            if predicted.class_probs is not None:
                evidence.update(zip(HEAD_FEATURES, map(float, predicted.class_probs[index])))
            probs = predicted.class_rule.predict_measured(evidence)
            class_index = int(np.argmax(probs))
        elif settings.classify == "topology" and settings.segmenter != "threshold":
            probs = predicted.class_probs[index]
            # measure_particle already counted the fragments (same crumb rule as the classifier's).
            class_index = class_from_fragments(probs, int(m["n_fragments"]))
        else:
            probs = predicted.class_probs[index]
            class_index = int(np.argmax(probs))
        diameter = m["eq_diameter_um"]
        too_small = diameter < (settings.min_judge_diameter_um if px else settings.min_judge_diameter_px)
        particles.append(
            ParticleResult(
                particle_id=pid,
                class_name=CLASS_NAMES[class_index],
                probs=tuple(float(p) for p in probs),
                low_confidence=bool(np.max(probs) < settings.low_confidence),
                touches_border=_touches_border((r0, c0, r1, c1), instances.shape),  # as detected: cut is cut
                too_small=bool(too_small),
                bbox=_mask_box(own, (r0, c0)) or (r0, c0, r1, c1),  # the measured (trimmed) section's box
                measurements=m,
                crop=crop if settings.keep_crops else None,
            )
        )
    times.add("measure", t)
    return ImageResult(image=image, stem=stem, group=group, instances=instances, phases=phases, particles=particles)


def analyse_image(
    image: SEMImage,
    stem: str,
    group: str,
    detector: Detector,
    models: Models,
    settings: AnalysisSettings,
    times: StageTimes | None = None,
) -> ImageResult:
    """Find, segment, measure and classify every particle of one image."""
    times = times or StageTimes()
    located = locate_particles(image, detector, models.crop_spec)
    for stage, seconds in located.seconds.items():
        times.seconds[stage] += seconds
    return measure_particles(predict_particles(located, stem, group, models, settings, times), settings, times)


def image_stem(image: SEMImage, root: Path | None) -> str:
    """Unique, flat name of one image page for output files.

    The path below the input root joins with "__" (A/f0.tif -> A__f0), so files of the same
    name in different group folders never overwrite each other; pages of a multi-page file
    get _p000, _p001, ...
    """
    rel = relative_source(image.source, root).with_suffix("")
    stem = "__".join(rel.parts)
    return f"{stem}_p{image.page:03d}" if image.n_pages > 1 else stem


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


def _rim_trim_mode(value: object) -> str:
    """infer.py's `trim_rim` as a `RIM_TRIM_PHASES` key (true = background, the default; false = none)."""
    if isinstance(value, bool):
        return "background" if value else "none"
    if value not in RIM_TRIM_PHASES:
        raise ValueError(f"trim_rim must be true, false or one of {sorted(RIM_TRIM_PHASES)}, got {value!r}")
    return str(value)


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


def _run(cfg: DictConfig | RunSettings, run_settings: RunSettings) -> RunOutcome:
    settings = run_settings.analysis
    if settings.segmenter not in SEGMENTERS:
        raise ValueError(f"segmenter must be one of {list(SEGMENTERS)}, got {settings.segmenter!r}")
    if settings.classify not in CLASSIFY_ROUTES:
        raise ValueError(f"classify must be one of {list(CLASSIFY_ROUTES)}, got {settings.classify!r}")
    models = Models.for_settings(settings, run_settings)
    # A bad override (or crop model weight) fails here, not per image, and on every route, not only crops.
    resolve_pore_weight(models.crops.metadata if models.crops is not None else None, settings.pore_weight)
    if settings.segmenter in ("model", "crops"):
        model = models.phases if settings.segmenter == "model" else models.crops
        check_polarity(model.metadata, settings.pore_polarity, instead="segmenter=threshold")
    input_spec = resolve_input(run_settings.input)
    if not has_glob(input_spec) and not Path(input_spec).exists():
        raise FileNotFoundError(f"input not found: {input_spec}")
    root = input_root(input_spec)
    found = find_image_files(input_spec)
    _check_found(found, input_spec)
    group_map = load_group_map(run_settings.groups_csv) if run_settings.groups_csv else None
    if group_map is not None:
        _check_groups(group_map, found, root, run_settings)
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
        "input": input_spec,
        "command": " ".join(sys.argv),
    }
    # The config as given is stored verbatim in the provenance; the settings come from run_settings.
    config = dataclasses.asdict(cfg) if isinstance(cfg, RunSettings) else cfg
    resume = bool(run_settings.resume)
    run_log = RunLog(
        output,
        run_settings.result_settings(provenance["model_sha256"], provenance["phase_model_sha256"]),
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
    skipped: list[SEMImage] = []
    t_start = time.perf_counter()
    sources = iter_images(
        found.files,
        pixel_size_um=run_settings.pixel_size_um,
        crop_bar=run_settings.crop_data_bar,
        n_threads=run_settings.decode_threads,
    )
    todo = (
        todo_item
        for item in _timed(sources, times, "decode")
        if (todo_item := _not_done(item, done, skipped)) is not None
    )
    located_stream = locate_ahead(
        todo,
        run_settings.detect,
        models.crop_spec,
        workers=run_settings.detect_workers,
    )
    warned_scale = False
    progress = RunProgress(len(found.files), enabled=run_settings.progress)
    # One writer thread, in input order: image i is measured and written while the model runs
    # on image i + 1 (onnxruntime, zlib, PNG encoding and most numpy work release the GIL).
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
            log.warning("%s has no pixel size: lengths are reported in pixels (length_unit=px)", image.source)
            warned_scale = True
        for stage, seconds in item.seconds.items():
            times.seconds[stage] += seconds
        try:
            predicted = predict_particles(
                item, image_stem(image, root), group_for(image.source, root, group_map), models, settings, times
            )
        except Exception as exc:  # one bad image must not stop a run over thousands
            log.exception("failed on %s page %d", image.source, image.page)
            out_queue.failure(str(image.source), image.page, f"{type(exc).__name__}: {exc}")
            progress.step(_page_name(image), out_queue.n_particles, "failed")
            continue
        out_queue.add(predicted, settings)
        progress.step(_page_name(image), out_queue.n_particles)
    progress.close()
    out_queue.drain()
    n_images, n_particles = out_queue.n_images, out_queue.n_particles
    n_skipped = len(skipped)
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
        _searched(input_spec), skipped_types, len(writer.done),
    )
    _write_timings(output, outcome, n_skipped)
    log.info(
        "done: %d particles in %d images, %d failed, %.1f s%s",
        n_particles, n_images, len(outcome.failures), wall, f"; {outcome.skipped_note()}" if skipped_types else "",
    )
    return outcome


class _WriteQueue:
    """Hands predictions (to measure and write) and failures to one background thread, in order.

    At most `max_pending` images wait, so memory stays bounded; `write` time is what the
    main thread spends waiting for that thread. Every writer call runs on that one thread,
    so the report's files are never written concurrently.
    """

    def __init__(self, writer: ReportWriter, times: StageTimes, max_pending: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.writer, self.times, self.max_pending = writer, times, max_pending
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fracscope-write")
        self.pending: deque = deque()
        self.n_images = self.n_particles = 0

    def add(self, predicted: Predicted, settings: AnalysisSettings) -> None:
        self._submit(self._measure_and_write, predicted, settings)

    def failure(self, source: str, page: int, message: str) -> None:
        self._submit(self.writer.add_failure, source, page, message)

    def drain(self) -> None:
        self._collect(0)
        self.pool.shutdown()

    def _submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        self._collect(self.max_pending)

    def _collect(self, keep: int) -> None:
        t = time.perf_counter()
        while self.pending and (len(self.pending) > keep or self.pending[0].done()):
            n = self.pending.popleft().result()
            if n is not None:
                self.n_images += 1
                self.n_particles += n
        self.times.add("write", t)

    def _measure_and_write(self, predicted: Predicted, settings: AnalysisSettings) -> int | None:
        """Measure and write one image; the particle count, or None when it failed."""
        image = predicted.located.image
        try:
            result = measure_particles(predicted, settings, self.times)
        except Exception as exc:  # one bad image must not stop a run over thousands
            log.exception("failed on %s page %d", image.source, image.page)
            self.writer.add_failure(str(image.source), image.page, f"{type(exc).__name__}: {exc}")
            return None
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
        log.warning(
            "%s changed since an earlier run analysed it (size or mtime); its earlier results are kept: "
            "use another output= to analyse it again",
            item.source,
        )
    skipped.append(item)
    return None


def _write_timings(output: Path, outcome: RunOutcome, n_skipped: int) -> None:
    """timings.json: where the time went, for benchmarks and for users tuning a run."""
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    payload = {
        "n_images": outcome.n_images,
        "n_images_skipped_resume": n_skipped,
        "n_particles": outcome.n_particles,
        "n_failed": len(outcome.failures),
        "wall_s": outcome.wall_s,
        "particles_per_s": outcome.n_particles / max(outcome.wall_s, 1e-9),
        "stage_s": outcome.seconds,
        "peak_rss_mb": peak_rss_mb,
        # the largest finished child (detect workers); the run's total is at most the sum
        "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }
    (output / "timings.json").write_text(json.dumps(payload, indent=2) + "\n")
