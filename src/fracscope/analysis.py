"""One image: SEM image → particle instances → phase maps → per-particle measurements and class.

`analyse_image` is that sentence; `predict_particles` (the networks) and `measure_particles`
(phases on the image grid, measurements, class) are its two halves, which a bulk run
(`fracscope.pipeline`, `fracscope.executor`) runs on different threads or machines.
By default the phase maps come from the native-resolution phase model (`fracscope.phase_map`)
and the class from the crack measurements on them and the section net's probabilities
(`fracscope.sections`, `fracscope.classify`); the crop model
(``segmenter=crops``, ``classify=head|topology``) and the paper's threshold
(``segmenter=threshold``) remain as options.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from fracscope.assets import resolve_model, resolve_phase_model
from fracscope.classify import (
    HEAD_FEATURES,
    SECTION_FEATURES,
    CrackClassifier,
    CrackRule,
    class_from_fragments,
    class_rule_from_dict,
    needs_head,
    needs_sections,
)
from fracscope.curtains import remove_curtain_streaks
from fracscope.detect import Detector
from fracscope.edges import edge_contrast
from fracscope.io import relative_source
from fracscope.locate import LocatedParticles, locate_particles
from fracscope.measure import measure_particle
from fracscope.measure.threshold import image_threshold, threshold_phases
from fracscope.phase_map import PhaseMapModel
from fracscope.phases import (
    CropPhases,
    ImagePhaseCodes,
    PhaseRule,
    check_pore_count,
    particle_phases,
    phases_on_image_grid,
    predict_crops,
    resolve_pore_weight,
)
from fracscope.refine import RIM_TRIM_PHASES
from fracscope.runtime import Backend, load_backend
from fracscope.sections import SectionNetModel, sections_of_image
from fracscope.types import CLASS_NAMES, ImageResult, ParticleResult, SEMImage

SEGMENTERS = ("model", "crops", "threshold")
CLASSIFY_ROUTES = ("native", "head", "topology")


@dataclass(frozen=True)
class AnalysisSettings:
    """How one image is turned into particle results (from the `infer` config)."""

    batch_size: int = 64
    # "model": the native-resolution phase model | "crops": the crop model's maps pasted back (the earlier
    # route) | "threshold": the paper's Eq. 1 on an Otsu threshold
    segmenter: str = "model"
    # "native": the phase model file's class rule on the native crack measurements (and the section net's
    # probabilities, when the rule reads them) | "head": the crop model's class head | "topology": the head
    # corrected by crack-mask connectivity
    classify: str = "native"
    # "dark" (empty pores) | "bright" (Pt- or resin-filled: the networks see them in dark-pore contrast) |
    # "auto": decided per image from the detected particles against the space between them
    # (`fracscope.polarity.image_pore_polarity`)
    pore_polarity: str = "auto"
    # Even out a drift of the particles' grey level across the image and detect again (`fracscope.illumination`)
    even_illumination: bool = True
    low_confidence: float = 0.6  # flag particles whose top class probability is below this
    min_judge_diameter_um: float = 3.0  # smaller sections are flagged too_small
    min_judge_diameter_px: float = 40.0  # the same, when the pixel size is unknown
    keep_crops: bool = True  # keep crops on results for review contact sheets
    pore_weight: float | None = None  # pore probability factor on the source grid; None = the model's own
    # segmenter=model: how many pore pixels a section gets: "resolved" (pores the argmax resolves keep its
    # outline, the rest counted as expected) | "expected" (the sum of the model's pore probabilities over the
    # section, `fracscope.phases.pores_by_expected_count`) | "argmax" (each pixel's most likely phase)
    pore_count: str = field(default="resolved", metadata={"convert": check_pore_count})
    # Mask-edge pixels the phase model calls one of these phases leave the particle (model segmenter only):
    # a key of `fracscope.refine.RIM_TRIM_PHASES` (the config also takes true and false).
    trim_rim: str = field(default="background", metadata={"convert": lambda v: rim_trim_mode(v)})
    # Crack lines along the milling direction, lined up across particles, are curtaining and made solid
    # (`fracscope.curtains`) in the phase model's map: what segmenter=model measures and classify=native reads.
    remove_curtains: bool = True


@dataclass(frozen=True)
class ModelChoice:
    """Which model files a run loads and where they run (the run's settings carry the same fields)."""

    phase_model_path: str | None = None  # None: the shipped phase model
    section_model_path: str | None = None  # the section net; None: the shipped one
    model_path: str | None = None  # the crop model; None: the shipped one
    backend: str = "onnx"
    device: str = "cpu"
    model_threads: int | None = None  # onnxruntime intra-op threads (None: all cores)


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over the run.

    detect and crop run in worker processes when detect_workers > 0, overlapping the model:
    then the stages add up to more than the wall time, and `wait` is the main process idling
    for the workers. Particles are measured on one background thread and outputs written on
    another while the model runs on the next image: `measure` is the measuring thread's time, and
    `write` is the main process waiting for them (and the final summary, plots and sheets).
    With ``executor=dask`` the stages are summed over the workers, `worker` is the tasks' whole
    time on their workers, and `worker_slot` the part of it that held a worker thread (a task measures
    and writes after handing its thread to the next task's networks): the run's wall time times the
    worker threads, less `worker_slot`, is what Dask and the client add.
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
    """The networks a run uses: the phase model, the section net and/or the crop model, as the settings need them."""

    phases: PhaseMapModel | None = None  # segmenter=model or classify=native
    crops: Backend | None = None  # segmenter=crops or classify=head|topology
    class_rule: CrackRule | CrackClassifier | None = None  # the phase model file's, read once
    sections: SectionNetModel | None = None  # classify=native with a class rule that reads the section net

    @classmethod
    def for_settings(cls, settings: AnalysisSettings, run: ModelChoice | None = None) -> Models:
        """Load what `settings` need (model files, device and threads from `run`, e.g. the run's
        `fracscope.pipeline.RunSettings`; the shipped models on the CPU without)."""
        run = run or ModelChoice()
        phases = crops = class_rule = sections = None
        if settings.segmenter == "model" or settings.classify == "native":
            phases = PhaseMapModel(resolve_phase_model(run.phase_model_path), device=run.device,
                                   threads=run.model_threads)
            class_rule = class_rule_from_dict(phases.metadata.class_rule)
        # A class rule that also reads the crop model's class head or the section net needs that network.
        native = settings.classify == "native"
        head = native and needs_head(class_rule)
        if settings.segmenter == "crops" or settings.classify in ("head", "topology") or head:
            crops = load_backend(resolve_model(run.model_path), backend=run.backend, device=run.device,
                                 threads=run.model_threads)
        if native and needs_sections(class_rule):
            sections = SectionNetModel(run.section_model_path, device=run.device, threads=run.model_threads)
        return cls(phases, crops, class_rule, sections)

    @property
    def pixel_size_range_um(self) -> tuple[float, float] | None:
        """Pixel sizes the phase model (else the crop model) was trained on, from its file; None: unknown."""
        for model in (self.phases, self.crops):
            if model is not None and model.metadata.pixel_size_range_um is not None:
                return tuple(float(v) for v in model.metadata.pixel_size_range_um)
        return None

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
    pixel_size_range_um: tuple[float, float] | None = None  # the models' training pixel sizes (quality flags)
    pore_polarity: str = "dark"  # this image's: the run's setting, or decided from the image under "auto"
    sections: SectionNetModel | None = None  # the section net, when the class rule reads it
    curtain_streaks: int = 0  # crack components of the phase map made solid as curtaining (`fracscope.curtains`)


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
        # Without a pixel size: the estimate (`locate.with_estimated_scale`), else the model's working one.
        px = image.working_pixel_size_um or models.phases.working_pixel_size_um
        codes = models.phases.predict_codes(located.pixels_for_networks, px) if located.instances.any() else None
    streaks = 0
    if codes is not None and settings.remove_curtains:
        codes, streaks = remove_curtain_streaks(codes, located.instances)
    if models.crops is not None:
        class_probs, phase_probs = predict_crops(models.crops, located.crops, settings.batch_size)
        pore_weight = resolve_pore_weight(models.crops.metadata, settings.pore_weight)
    times.add("model", t)
    return Predicted(located, stem, group, codes, models.class_rule, class_probs, phase_probs, pore_weight,
                     models.pixel_size_range_um, located.pore_polarity, models.sections, streaks)


@dataclass
class MeasuredSection:
    """One kept section of an image before its class: where it is and what was measured on it."""

    particle_id: int
    box: tuple[int, int, int, int]  # its bounding box as detected (r0, c0, r1, c1), end-exclusive
    own: np.ndarray  # its measured (trimmed) mask in the box
    measurements: dict[str, float]
    evidence_mask: np.ndarray | None  # the mask of the native phase map that the class evidence is read on
    evidence: dict[str, float] | None  # classify=native: the crack measurements the class rule reads
    crop_index: int | None  # its crop in the crop model's order, when it has one


def measure_particles(predicted: Predicted, settings: AnalysisSettings, times: StageTimes) -> ImageResult:
    """Phases pasted back onto the image's own pixel grid, every particle measured there, then classified."""
    located, stem, group = predicted.located, predicted.stem, predicted.group
    image, instances = located.image, located.instances
    t = time.perf_counter()
    trim = RIM_TRIM_PHASES[settings.trim_rim]
    rule = PhaseRule(predicted.pore_weight, trim)
    phases = np.zeros(instances.shape, np.uint8)
    polarity = predicted.pore_polarity
    grey_threshold = image_threshold(image.pixels, polarity) if settings.segmenter == "threshold" else None
    boxes = ndi.find_objects(instances)  # one pass: every particle's own bounding box
    px = image.pixel_size_um
    # Reported lengths times this are µm, for the size rules only: 1 with a pixel size; the estimate
    # (`locate.with_estimated_scale`) without one, whose lengths stay in pixels; None: neither.
    to_um = 1.0 if px else image.estimated_pixel_size_um
    # The detector's size rule, applied again to the outline that is measured (trimmed, at full
    # resolution), so that no reported section is smaller than the minimum. Needs a (estimated) pixel size.
    min_d = located.min_diameter_um if to_um else None
    crops = {c.particle_id: (i, c) for i, c in enumerate(located.crops)}
    kept: list[MeasuredSection] = []
    for pid in (i + 1 for i, b in enumerate(boxes) if b is not None):
        rows, cols = boxes[pid - 1]
        box = (rows.start, cols.start, rows.stop, cols.stop)
        r0, c0, r1, c1 = box
        own = instances[r0:r1, c0:c1] == pid
        index, crop = crops.get(pid, (None, None))
        native = (particle_phases(predicted.codes, box, own, trim, settings.pore_count)
                  if predicted.codes is not None else None)
        if settings.segmenter == "threshold":
            local = threshold_phases(image.pixels[r0:r1, c0:c1], own, polarity, grey_threshold)
        else:
            found = native if settings.segmenter == "model" else phases_on_image_grid(
                CropPhases(predicted.phase_probs[index], crop, box, own), rule)
            instances[r0:r1, c0:c1][own & ~found.mask] = 0  # the trimmed rim leaves the particle
            own, local = found.mask, found.phases
        m = measure_particle(own, local, px)
        if min_d and m["eq_diameter_um"] * to_um < min_d:
            instances[r0:r1, c0:c1][own] = 0  # its id stays unused
            continue
        phases[r0:r1, c0:c1][own] = local[own]
        evidence = None
        if settings.classify == "native":
            evidence = dict(m if settings.segmenter == "model" else measure_particle(native.mask, native.phases, px))
        kept.append(MeasuredSection(pid, box, own, m, native.mask if native is not None else None, evidence, index))
    network_probs = _network_probs(predicted, kept)
    particles = [_particle_result(section, *_section_class(predicted, section, probs, settings), probs,
                                  located, instances.shape, settings, to_um)
                 for section, probs in zip(kept, network_probs, strict=True)]
    edges = edge_contrast(located.pixels_for_networks, instances, px or image.estimated_pixel_size_um, boxes)
    times.add("measure", t)
    return ImageResult(image=image, stem=stem, group=group, instances=instances, phases=phases, particles=particles,
                       pixel_size_range_um=predicted.pixel_size_range_um, pore_polarity=polarity,
                       curtain_streaks=predicted.curtain_streaks, shading=located.shading,
                       illumination_evened=located.illumination_evened, edge_contrast=edges)


def _network_probs(predicted: Predicted, kept: list[MeasuredSection]) -> list[dict[str, float]]:
    """Per kept section, the class probabilities of the networks that ran on it, by column name
    (`SECTION_FEATURES`, `HEAD_FEATURES`): the section net's in one batch over the image."""
    out: list[dict[str, float]] = [{} for _ in kept]
    if predicted.class_probs is not None:
        for probs, section in zip(out, kept, strict=True):
            if section.crop_index is not None:
                probs.update(zip(HEAD_FEATURES, map(float, predicted.class_probs[section.crop_index])))
    net, codes = predicted.sections, predicted.codes
    if net is not None and codes is not None and kept:
        # The networks' pixels (dark-pore contrast), as the net was trained on them.
        inputs = sections_of_image(predicted.located.pixels_for_networks, codes.inside,
                                   [(s.box, s.evidence_mask) for s in kept], net.window)
        for probs, p in zip(out, net.predict(inputs), strict=True):
            probs.update(zip(SECTION_FEATURES, map(float, p)))
    return out


def _section_class(predicted: Predicted, section: MeasuredSection, network_probs: dict[str, float],
                   settings: AnalysisSettings) -> tuple[np.ndarray, int]:
    """Class probabilities and class index of one section, by the run's classify route."""
    if settings.classify == "native":
        probs = predicted.class_rule.predict_measured({**section.evidence, **network_probs})
        return probs, int(np.argmax(probs))
    probs = predicted.class_probs[section.crop_index]
    if settings.classify == "topology" and settings.segmenter != "threshold":
        # measure_particle already counted the fragments (same crumb rule as the classifier's).
        return probs, class_from_fragments(probs, int(section.measurements["n_fragments"]))
    return probs, int(np.argmax(probs))


def _particle_result(section: MeasuredSection, probs: np.ndarray, class_index: int,
                     network_probs: dict[str, float], located: LocatedParticles, shape: tuple[int, int],
                     settings: AnalysisSettings, to_um: float | None) -> ParticleResult:
    r0, c0, r1, c1 = section.box
    pid, m = section.particle_id, section.measurements
    scores = located.scores
    score = float(scores[pid - 1]) if scores is not None and pid <= len(scores) else None
    diameter = m["eq_diameter_um"]
    if to_um:
        too_small = diameter * to_um < settings.min_judge_diameter_um
    else:
        too_small = diameter < settings.min_judge_diameter_px
    crop = located.crops[section.crop_index] if section.crop_index is not None else None
    return ParticleResult(
        particle_id=pid,
        class_name=CLASS_NAMES[class_index],
        probs=tuple(float(p) for p in probs),
        low_confidence=bool(np.max(probs) < settings.low_confidence),
        touches_border=_touches_border(section.box, shape),  # as detected: cut is cut
        too_small=bool(too_small),
        bbox=_mask_box(section.own, (r0, c0)) or section.box,  # the measured (trimmed) section's box
        measurements=m,
        crop=crop if settings.keep_crops else None,
        detector_score=score,
        network_probs=network_probs,
    )


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
    located = locate_particles(image, detector, models.crop_spec, settings.pore_polarity, settings.even_illumination)
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


def rim_trim_mode(value: object) -> str:
    """infer.py's `trim_rim` as a `RIM_TRIM_PHASES` key (true = background, the default; false = none)."""
    if isinstance(value, bool):
        return "background" if value else "none"
    if value not in RIM_TRIM_PHASES:
        raise ValueError(f"trim_rim must be true, false or one of {sorted(RIM_TRIM_PHASES)}, got {value!r}")
    return str(value)
