"""3-D pore analysis of a FIB-SEM stack: read → align → segment → label → measure → report.

`run(cfg)` is what ``python -m fracscope.pores3d`` calls; `analyse_stack` is the same
sentence for an open `Stack`. The stack streams through in chunks of slices, several times
(drift, threshold, segmentation, labelling, measurement), and the per-voxel intermediates
(phase codes, provisional labels) live in scratch memory maps, so memory is bounded by
the chunk size, not by the stack.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fracscope.io.memmap import release_pages
from fracscope.io.tiff import write_volume_tiff
from fracscope.measure import PROFILE_FRACTIONS
from fracscope.pores3d.align import AlignedStack, estimate_drift
from fracscope.pores3d.label import ChunkedLabeler, LabelMerge, structure
from fracscope.pores3d.measure import (
    ParticleAccumulator,
    ParticleGeometry,
    PoreAccumulator,
    RadialShells,
    ShellAccumulator,
    outside_neighbours,
    size_distribution,
)
from fracscope.pores3d.report import (
    PLOTS_DIR,
    OrthoSlices,
    plot_orthoslices,
    plot_radial_porosity,
    plot_volume_histogram,
    plot_volume_vs_radius,
    write_summary,
    write_tables,
)
from fracscope.pores3d.segment import (
    ModelVoids,
    NativeVoids,
    SegmentSettings,
    SliceSegmenter,
    decide_pore_polarity,
    stack_threshold,
    with_stack_polarity,
)
from fracscope.pores3d.stack import Stack, StackError, VoxelSize, open_stack
from fracscope.settings import SettingsError, settings_from_config
from fracscope.types import Phase

log = logging.getLogger(__name__)

LABELS_TIF = "labels.tif"
SHIFTS_CSV = "shifts.csv"
# Working bytes per voxel of one chunk (labels, masks, halo, index arrays), for sizing chunks.
BYTES_PER_VOXEL = 24
# The particle body is one solid object: face connectivity keeps neighbours touching at a corner apart.
PARTICLE_CONNECTIVITY = 6


@dataclass(frozen=True)
class AlignSettings:
    """Slice alignment (see `fracscope.pores3d.align`)."""

    enabled: bool = False
    upsample_factor: int = 1
    crop_px: int = 384
    smooth_px: float = 2.0
    max_step_px: float = 8.0


@dataclass(frozen=True)
class PoreSettings:
    """Which voids are pores and how they are summarised.

    connectivity : 6, 18 or 26.
    min_volume_um3 : smaller voids are noise (paper: 0.002 µm³).
    bins_um3 : lower edges of the volume classes; the last is open above.
    shell_fractions : radial shell edges as fractions of the particle radius.
    n_largest : pores listed in summary.json.
    """

    connectivity: int = 6
    min_volume_um3: float = 0.002
    bins_um3: tuple[float, ...] = (0.002, 0.010, 0.030)
    shell_fractions: tuple[float, ...] = PROFILE_FRACTIONS
    n_largest: int = 10


@dataclass(frozen=True)
class Settings:
    """Everything `analyse_stack` needs besides the stack (built from the Hydra config)."""

    align: AlignSettings = AlignSettings()
    segment: SegmentSettings = SegmentSettings()
    pores: PoreSettings = PoreSettings()
    chunk_mb: float = 256.0
    in_memory_mb: float = 256.0
    work_dir: str | None = None
    keep_work: bool = False
    write_labels: bool = True
    label_compression: str | None = "zlib"
    plots: bool = True

    @classmethod
    def from_cfg(cls, cfg: Any) -> "Settings":
        """From the `pores3d` config (an OmegaConf node or nested dicts); see `Pores3DConfig`.

        Raises
        ------
        SettingsError
            On an unknown key, or values no analysis can use.
        """
        return Pores3DConfig.from_config(cfg).settings()


@dataclass(frozen=True)
class SegmentConfig:
    """The `segment` section: `SegmentSettings` and, for method=model, the model to run."""

    settings: SegmentSettings = field(default_factory=SegmentSettings, metadata={"flatten": True})
    model: str = "native"  # native: the native-resolution phase model | crops: the crop model (earlier route)
    phase_model_path: str | None = None  # model=native; None: the shipped phase model
    model_path: str | None = None  # model=crops; None: the shipped crop model
    device: str = "cpu"
    batch_size: int = 16
    pore_weight: float | None = None  # None: the model file's own (as infer.py)


@dataclass(frozen=True)
class MemoryConfig:
    """The `memory` section (see `Settings`)."""

    chunk_mb: float = 256.0
    in_memory_mb: float = 256.0
    work_dir: str | None = None
    keep_work: bool = False


@dataclass(frozen=True)
class OutputsConfig:
    """The `outputs` section (see `Settings`)."""

    labels: bool = True
    label_compression: str | None = "zlib"  # "none" = None
    plots: bool = True


@dataclass(frozen=True)
class Pores3DConfig:
    """The `pores3d` config (conf/pores3d.yaml), read once by `run`."""

    input: str | None = None
    output: str = "outputs/pores3d"
    voxel_size_um: float | tuple[float, ...] | None = None  # [z, y, x] µm, or one value
    slice_spacing_um: float | None = None
    align: AlignSettings = AlignSettings()
    segment: SegmentConfig = SegmentConfig()
    pores: PoreSettings = PoreSettings()
    memory: MemoryConfig = MemoryConfig()
    outputs: OutputsConfig = OutputsConfig()

    @classmethod
    def from_config(cls, cfg: Any) -> "Pores3DConfig":
        """From the composed config; a SettingsError names an unknown key or a bad value."""
        return settings_from_config(cls, cfg, "the pores3d config")

    def settings(self) -> Settings:
        """What `analyse_stack` needs."""
        m, o = self.memory, self.outputs
        return Settings(
            align=self.align,
            segment=self.segment.settings,
            pores=self.pores,
            chunk_mb=m.chunk_mb,
            in_memory_mb=m.in_memory_mb,
            work_dir=m.work_dir or None,
            keep_work=m.keep_work,
            write_labels=o.labels,
            label_compression=None if o.label_compression in (None, "", "none") else o.label_compression,
            plots=o.plots,
        )


@dataclass
class Pores3DResult:
    """What a run produced: the numbers most callers want and where everything was written."""

    output_dir: Path
    n_pores: int
    porosity_pct: float
    particle: ParticleGeometry
    table: dict[str, np.ndarray]
    shells: RadialShells
    summary: dict
    files: list[Path] = field(default_factory=list)
    wall_s: float = 0.0


def min_voxels(min_volume_um3: float, voxel: VoxelSize) -> int:
    """Fewest voxels whose volume reaches `min_volume_um3` (1e-9 relative slack for float error)."""
    if min_volume_um3 <= 0:
        return 0
    return int(math.ceil(min_volume_um3 / voxel.volume_um3 * (1.0 - 1e-9)))


def chunk_slices(shape: tuple[int, int, int], chunk_mb: float) -> int:
    """Slices per chunk so one chunk's working arrays stay near `chunk_mb` MiB."""
    per_slice = shape[1] * shape[2] * BYTES_PER_VOXEL
    return max(1, min(shape[0], int(chunk_mb * 2**20 // per_slice)))


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class Scratch:
    """Per-voxel working arrays: in memory when small, memory-mapped files in `work_dir` otherwise."""

    def __init__(self, work_dir: Path, in_memory_mb: float, keep: bool = False) -> None:
        self.dir = Path(work_dir)
        self.in_memory_mb = float(in_memory_mb)
        self.keep = keep
        self._created = False

    def array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A zero-filled array; a ``.npy`` memory map when larger than `in_memory_mb`."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes <= self.in_memory_mb * 2**20:
            return np.zeros(shape, dtype)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._created = True
        return np.lib.format.open_memmap(self.dir / f"{name}.npy", mode="w+", dtype=dtype, shape=tuple(shape))

    def close(self) -> None:
        """Remove the scratch files (unless asked to keep them)."""
        if self._created and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _segment_and_label(stack: Stack, segmenter: SliceSegmenter, settings: Settings, phases: np.ndarray,
                       labels: np.ndarray, chunk_z: int, voxel: VoxelSize) -> tuple[LabelMerge, ParticleAccumulator]:
    """Phase codes into `phases`, provisional pore labels into `labels`; the particle's size and centre.

    With ``keep_largest`` a first pass labels the particle bodies (into `labels`), and a
    second keeps the largest, zeroes the rest in `phases` and labels the pores in place.
    """
    shape = stack.shape
    pores = ChunkedLabeler(shape, settings.pores.connectivity, min_voxels(settings.pores.min_volume_um3, voxel))
    body = ParticleAccumulator()
    if not settings.segment.keep_largest:
        for z0, z1 in stack.chunks(chunk_z):
            ph = segmenter(stack.read(z0, z1))
            phases[z0:z1] = ph
            body.add(z0, ph > 0)
            labels[z0:z1] = pores.add(z0, ph == Phase.PORE)
            release_pages(phases)
            release_pages(labels)
        return pores.finish(), body

    bodies = ChunkedLabeler(shape, PARTICLE_CONNECTIVITY)
    for z0, z1 in stack.chunks(chunk_z):
        ph = segmenter(stack.read(z0, z1))
        phases[z0:z1] = ph
        labels[z0:z1] = bodies.add(z0, ph > 0)
        release_pages(phases)
        release_pages(labels)
    merged = bodies.finish()
    if merged.n == 0:
        raise StackError("no particle found: the threshold leaves no solid voxels (check the segment.* settings)")
    largest = int(np.argmax(merged.counts[1:])) + 1
    log.info("particle: largest of %d bodies, %d voxels", merged.n, int(merged.counts[largest]))
    for z0, z1 in stack.chunks(chunk_z):
        inside = merged.apply(labels[z0:z1]) == largest
        ph = np.where(inside, phases[z0:z1], np.uint8(0))
        phases[z0:z1] = ph
        body.add(z0, inside)
        labels[z0:z1] = pores.add(z0, ph == Phase.PORE)
        release_pages(phases)
        release_pages(labels)
    return pores.finish(), body


def _measure_slices(stack: Stack | None, phases: np.ndarray, labels: np.ndarray, merge: LabelMerge,
                    pores: PoreAccumulator, shells: ShellAccumulator, ortho: OrthoSlices | None,
                    chunk_z: int, connectivity: int, out_dtype: np.dtype):
    """Final labels slice by slice (for the label TIFF), measuring pores and shells on the way."""
    st = structure(connectivity)
    n_z = phases.shape[0]
    for z0 in range(0, n_z, chunk_z):
        z1 = min(z0 + chunk_z, n_z)
        h0, h1 = max(z0 - 1, 0), min(z1 + 1, n_z)
        halo = np.asarray(phases[h0:h1])
        ph = halo[z0 - h0 : z0 - h0 + (z1 - z0)]
        final = merge.apply(np.asarray(labels[z0:z1]))
        is_pore = final > 0
        pores.add(z0, final, outside_neighbours(is_pore, halo > 0, z0 - h0, st))
        shells.add(z0, ph > 0, is_pore, ph == Phase.PORE)
        if ortho is not None:
            ortho.add(z0, stack.read(z0, z1) if stack is not None else None, final, ph)
        release_pages(phases)
        release_pages(labels)
        yield from final.astype(out_dtype, copy=False)


def _largest_pores(table: dict[str, np.ndarray], n: int) -> list[dict]:
    order = np.argsort(-table["volume_um3"], kind="stable")[:n]
    return [
        {
            "pore_id": int(table["pore_id"][i]),
            "volume_um3": float(table["volume_um3"][i]),
            "eq_diameter_um": float(table["eq_diameter_um"][i]),
            "centroid_um": [float(table[f"centroid_{a}_um"][i]) for a in "zyx"],
            "r_rel": float(table["r_rel"][i]),
            "touches_outside": bool(table["touches_outside"][i]),
            "touches_border": bool(table["touches_border"][i]),
        }
        for i in order
    ]


def _align(stack: Stack, settings: AlignSettings, chunk_z: int, out: Path) -> tuple[Stack, np.ndarray | None]:
    """The stack read through its estimated drift, and the shifts (also written to shifts.csv)."""
    if not settings.enabled:
        return stack, None
    shifts = estimate_drift(stack, settings.upsample_factor, settings.crop_px, chunk_z, settings.smooth_px,
                            settings.max_step_px)
    rows = "\n".join(f"{z},{dy:.4f},{dx:.4f}" for z, (dy, dx) in enumerate(shifts))
    (out / SHIFTS_CSV).write_text("slice,shift_y_px,shift_x_px\n" + rows + "\n", encoding="utf-8")
    return AlignedStack(stack, shifts), shifts


def _summary(stack: Stack, settings: Settings, shifts: np.ndarray | None, threshold: float, pore_polarity: str,
             particle: ParticleGeometry, merge: LabelMerge, table: dict[str, np.ndarray],
             radial: RadialShells) -> dict:
    """summary.json's content (layout in the module docs of `fracscope.pores3d.report`)."""
    voxel, seg, pores = stack.voxel_size, settings.segment, settings.pores
    n_part = particle.n_voxels
    pct = (lambda k: 100.0 * k / n_part if n_part else math.nan)
    open_ = table["touches_outside"]
    return {
        "input": stack.source,
        "shape_zyx": list(stack.shape),
        "dtype": str(np.dtype(stack.dtype)),
        "voxel_size_um": {"z": voxel.z_um, "y": voxel.y_um, "x": voxel.x_um},
        "voxel_size_source": voxel.source,
        "alignment": {
            "enabled": settings.align.enabled,
            "upsample_factor": settings.align.upsample_factor,
            "max_shift_px": float(np.abs(shifts).max()) if shifts is not None else 0.0,
            "last_shift_px": shifts[-1].tolist() if shifts is not None else [0.0, 0.0],
        },
        "segmentation": {"method": seg.method, "threshold": threshold, "pore_polarity": pore_polarity,
                         "pore_polarity_setting": seg.pore_polarity,
                         "envelope_closing_um": seg.envelope_closing_um, "keep_largest": seg.keep_largest},
        "connectivity": pores.connectivity,
        "min_volume_um3": pores.min_volume_um3,
        "min_voxels": min_voxels(pores.min_volume_um3, voxel),
        "particle": {"n_voxels": n_part, "volume_um3": particle.volume_um3,
                     "eq_diameter_um": particle.eq_diameter_um, "centroid_um": list(particle.centroid_um)},
        "n_pores": merge.n,
        "n_noise_voids": merge.n_dropped,
        "noise_voxels": merge.dropped_voxels,
        "porosity_pct": pct(int(table["n_voxels"].sum())),
        "porosity_all_voids_pct": pct(int(sum(radial.void_voxels))),
        "open_porosity_pct": pct(int(table["n_voxels"][open_].sum())),
        "n_open_pores": int(open_.sum()),
        "n_border_pores": int(table["touches_border"].sum()),
        "distribution": size_distribution(table["volume_um3"], pores.bins_um3),
        "largest_pores": _largest_pores(table, pores.n_largest),
        "radial_shells": radial.as_dict(),
    }


def _write_plots(out: Path, summary: dict, table: dict[str, np.ndarray], radial: RadialShells,
                 ortho: OrthoSlices | None, voxel: VoxelSize, pores: PoreSettings) -> list[Path]:
    plots = out / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    volumes = table["volume_um3"]
    files = [
        plot_volume_histogram(volumes, summary["distribution"], summary["n_noise_voids"], pores.min_volume_um3,
                              plots / "volume_histogram.png"),
        plot_radial_porosity(radial, plots / "radial_porosity.png"),
        plot_volume_vs_radius(volumes, table["r_rel"], table["touches_outside"], pores.bins_um3,
                              plots / "volume_vs_radius.png"),
    ]
    if ortho is not None:
        files.append(plot_orthoslices(ortho, voxel.zyx, volumes, pores.bins_um3, plots / "orthoslices.png"))
    return files


def _slice_model(seg: SegmentConfig, pore_polarity: str, stack: Stack) -> NativeVoids | ModelVoids:
    """The model segment.method=model runs on each slice (`segment.model`)."""
    if seg.model not in ("native", "crops"):
        raise SettingsError(f"segment.model must be 'native' or 'crops', got {seg.model!r}")
    try:
        if seg.model == "native":
            from fracscope.assets import resolve_phase_model
            from fracscope.phase_map import PhaseMapModel

            phase_model = PhaseMapModel(resolve_phase_model(seg.phase_model_path), device=seg.device)
            return NativeVoids(phase_model, stack.voxel_size.x_um, pore_polarity)
        from fracscope.assets import resolve_model
        from fracscope.runtime import load_backend

        backend = load_backend(resolve_model(seg.model_path), device=seg.device)
        return ModelVoids(backend, seg.batch_size, seg.pore_weight, pore_polarity)
    except ValueError as exc:  # the model does not fit the settings: a one-line error
        raise SettingsError(str(exc)) from None


def analyse_stack(stack: Stack, settings: Settings, output_dir: str | Path, model: ModelVoids | None = None,
                  provenance: dict | None = None) -> Pores3DResult:
    """Analyse one stack and write pores.csv/parquet, summary.json, labels.tif and plots/.

    Parameters
    ----------
    stack : Stack
        With its voxel size resolved (`open_stack`, or an `ArrayStack`).
    settings : Settings
    output_dir : str or Path
    model : ModelVoids, optional
        Needed for ``segment.method=model``.
    provenance : dict, optional
        Extra entries for summary.json (input path, config).

    Returns
    -------
    Pores3DResult
    """
    t_start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    voxel, shape = stack.voxel_size, stack.shape
    chunk_z = chunk_slices(shape, settings.chunk_mb)
    timings: dict[str, float] = {}
    log.info("stack %s: %s %s, voxel (z, y, x) = %s µm from %s, %d slices per chunk",
             stack.source, shape, np.dtype(stack.dtype), voxel.zyx, voxel.source, chunk_z)

    t = time.perf_counter()
    stack, shifts = _align(stack, settings.align, chunk_z, out)
    t = _lap(timings, "align", t)
    seg = settings.segment
    found = None if seg.method == "fixed" else stack_threshold(stack, chunk_z)
    threshold = float(seg.threshold) if found is None else found.value
    # auto: decided once for the whole stack, on the same threshold, before any slice is segmented.
    polarity = decide_pore_polarity(stack, threshold) if seg.pore_polarity == "auto" else seg.pore_polarity
    t = _lap(timings, "threshold", t)
    log.info("threshold %.6g (%s, pores %s%s)", threshold, seg.method, polarity,
             " by auto" if seg.pore_polarity == "auto" else "")
    segmenter = SliceSegmenter(replace(seg, pore_polarity=polarity), found or threshold, (voxel.y_um, voxel.x_um),
                               with_stack_polarity(model, polarity))
    files: list[Path] = [out / SHIFTS_CSV] if shifts is not None else []

    with Scratch(Path(settings.work_dir) if settings.work_dir else out / ".work", settings.in_memory_mb,
                 settings.keep_work) as scratch:
        phases = scratch.array("phases", shape, np.uint8)
        labels = scratch.array("labels", shape, np.uint32)
        merge, body = _segment_and_label(stack, segmenter, settings, phases, labels, chunk_z, voxel)
        particle = body.result(voxel)
        t = _lap(timings, "segment_label", t)
        log.info("%d pores >= %g µm³, %d smaller voids dropped", merge.n, settings.pores.min_volume_um3,
                 merge.n_dropped)

        pores = PoreAccumulator(merge.n, shape)
        shells = ShellAccumulator(settings.pores.shell_fractions, particle, voxel)
        ortho = None
        if settings.plots and particle.n_voxels:
            centre = tuple(int(np.clip(round(c / d), 0, n - 1))
                           for c, d, n in zip(particle.centroid_um, voxel.zyx, shape))
            ortho = OrthoSlices(centre, shape)
        out_dtype = np.dtype(np.uint16 if merge.n <= np.iinfo(np.uint16).max else np.uint32)
        slices = _measure_slices(stack if settings.plots else None, phases, labels, merge, pores, shells, ortho,
                                 chunk_z, settings.pores.connectivity, out_dtype)
        if settings.write_labels:
            files.append(write_volume_tiff(out / LABELS_TIF, slices, shape, out_dtype, voxel.zyx,
                                           settings.label_compression))
        else:
            for _ in slices:
                pass
        t = _lap(timings, "measure_write", t)

    table = pores.table(voxel, particle)
    radial = shells.result()
    summary = _summary(stack, settings, shifts, threshold, polarity, particle, merge, table, radial)
    from fracscope.report.summary import make_provenance  # the report package pulls in pandas

    prov = dict(provenance or {})
    summary["provenance"] = make_provenance(prov.pop("config", {}), prov)
    files.extend(write_tables(table, settings.pores.bins_um3, out))
    if settings.plots:
        files.extend(_write_plots(out, summary, table, radial, ortho, voxel, settings.pores))
    _lap(timings, "report", t)
    wall = time.perf_counter() - t_start
    summary.update(timings_s=timings, wall_s=wall, peak_rss_mib=peak_rss_mib())
    files.append(write_summary(summary, out))
    return Pores3DResult(out, merge.n, summary["porosity_pct"], particle, table, radial, summary, files, wall)


def _lap(timings: dict[str, float], stage: str, t0: float) -> float:
    now = time.perf_counter()
    timings[stage] = now - t0
    return now


def run(cfg: Any) -> Pores3DResult:
    """Open ``cfg.input``, analyse it with the `pores3d` config, write into ``cfg.output``."""
    from omegaconf import OmegaConf

    config = Pores3DConfig.from_config(cfg)
    if config.input in (None, "", "???"):
        raise SettingsError("input=STACK.tif (a multi-page TIFF or a folder of slices) is required")
    settings = config.settings()
    voxel = config.voxel_size_um
    stack = open_stack(config.input, list(voxel) if isinstance(voxel, tuple) else voxel, config.slice_spacing_um)
    model = None
    if settings.segment.method == "model":
        model = _slice_model(config.segment, settings.segment.pore_polarity, stack)
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    if isinstance(plain, dict):
        plain.pop("hydra", None)
    with stack:
        return analyse_stack(stack, settings, config.output, model, {"input": config.input, "config": plain})
