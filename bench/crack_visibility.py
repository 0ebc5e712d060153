"""Crack visibility: does the pipeline call a section with one short thin crack damaged?

    python bench/crack_visibility.py [--per-cell 20] [--intact-per-cell 80] [--seed 101] [--quick]
                                     [--set classify=topology --set model_path=... ...]
                                     [--synth imaging.noise_sd=0.03 ...] [--csv sections.csv]

Sections are drawn with the generator's own pieces (`fracscope.synth`: geometry, grains, calibrated
pores, imaging) as INTACT particles, and then one crack of controlled size is drawn into the phase
map before rendering, so the image shows it as the generator draws cracks (a void):
- width 1, 2 or 3 source pixels: a w x w square brush along an 8-connected centreline (w pixels
  across a horizontal or vertical crack, about (2w-1)/1.4 across a diagonal one);
- length 0.5, 1, 2 or 4 µm along the centreline (pixel-centre arc length + 1 px, within ±1 px), the
  path routed along grain boundaries as the generator routes its cracks;
- half start at the surface and run inward, half lie fully inside (at least 3 px from the outline);
- on both presets (gp, p) at 0.05 and 0.06 µm/px; `--per-cell` sections per width x length x
  preset x pixel-size cell, `--intact-per-cell` crack-free sections (grains and pores) per preset x
  pixel size for the false-damage rate.
The sections are laid out with ~1 µm of matrix between them on fields (one preset and pixel size per
field, the config's fixed imaging) and run through detection and analysis (`analyse_field`: the one
place that calls the pipeline). Predicted particles are matched to the true sections at IoU >= 0.5.

Reported: recall of "damaged" (predicted mildly_damaged or broken) per crack width x length and
preset x pixel size on the matched cracked sections; the false-damage rate on matched intact
sections; the detection recall (unmatched sections are counted there, not as missed damage); wall
time, the onnxruntime fp32 MatMul peak, and the command that reproduces the run. The seed is a tuning
seed (never 0, the training seed, nor 9001, the held-out one).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, replace

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage.graph import route_through_array  # noqa: E402

from fracscope.synth import SynthConfig, load_config  # noqa: E402
from fracscope.synth.damage import canonical_class  # noqa: E402
from fracscope.synth.geometry import ParticleSpec  # noqa: E402
from fracscope.synth.generate import render_particle  # noqa: E402
from fracscope.synth.imaging import ImagingParams, render_image  # noqa: E402
from fracscope.types import CLASS_NAMES, SEMImage, Phase  # noqa: E402

PRESETS = ("gp", "p")
PIXEL_SIZES_UM = (0.05, 0.06)
WIDTHS_PX = (1, 2, 3)
LENGTHS_UM = (0.5, 1.0, 2.0, 4.0)
STARTS = ("surface", "inside")
EDGE_CLEARANCE_PX = 3.0  # an inside crack keeps this far from the outline; a surface crack runs inward past it
GAP_UM = 1.0  # matrix between neighbouring sections on a field


@dataclass(frozen=True)
class CrackSpec:
    """One crack to draw: width in source pixels, centreline length in µm, where it starts."""

    width_px: int
    length_um: float
    start: str  # "surface" (opens to the outline, runs inward) | "inside" (clear of the outline)


@dataclass
class Section:
    """One drawn section on its own canvas, cropped to the mask."""

    mask: np.ndarray
    phases: np.ndarray
    grains: np.ndarray
    boundary: np.ndarray
    class_name: str  # after `canonical_class` (crumbs cut off by a crack count as crack)
    crack: CrackSpec | None
    centreline: np.ndarray  # (N, 2) row, col of the crack centreline; (0, 2) without a crack


def path_length_px(path: np.ndarray) -> float:
    """Length of an 8-connected pixel path: centre-to-centre arc length + 1 (a straight run of n pixels is n)."""
    if len(path) == 0:
        return 0.0
    steps = np.hypot(*np.diff(path.astype(float), axis=0).T) if len(path) > 1 else np.zeros(0)
    return float(steps.sum()) + 1.0


def paint_crack(path: np.ndarray, width_px: int, shape: tuple[int, int]) -> np.ndarray:
    """The crack pixels: a width x width square brush along the centreline (w pixels across an axis-aligned run)."""
    line = np.zeros(shape, dtype=bool)
    line[path[:, 0], path[:, 1]] = True
    if width_px <= 1:
        return line
    return ndi.binary_dilation(line, structure=np.ones((width_px, width_px), bool))


def _truncate(path: np.ndarray, length_px: float) -> np.ndarray | None:
    """The prefix of `path` whose length is closest to `length_px`; None when the whole path is too short."""
    steps = np.hypot(*np.diff(path.astype(float), axis=0).T)
    lengths = np.concatenate([[1.0], 1.0 + np.cumsum(steps)])
    if lengths[-1] < length_px - 1.0:
        return None
    return path[: int(np.argmin(np.abs(lengths - length_px))) + 1]


def crack_centreline(
    mask: np.ndarray, boundary: np.ndarray, length_px: float, start: str, rng: np.random.Generator, tries: int = 8
) -> np.ndarray | None:
    """An 8-connected centreline of `length_px` (±1) inside `mask`, routed along grain boundaries.

    `start="surface"` begins on an outline pixel and heads for the section's centre; `"inside"` begins
    and stays at least `EDGE_CLEARANCE_PX` from the outline. None when `tries` draws do not fit.
    """
    depth = ndi.distance_transform_edt(mask)
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    # As the generator's cracks: cheap along grain boundaries, dearer through grains; the outline
    # band is dear too, so a crack runs into the section instead of along its rim.
    cost = np.where(boundary, 1.0, 6.0) * rng.uniform(1.0, 1.6, mask.shape)
    cost[depth < EDGE_CLEARANCE_PX] = 60.0
    cost[~mask] = 1e4
    outline = np.argwhere(mask & (depth <= 1.0))
    deep = np.argwhere(depth >= EDGE_CLEARANCE_PX + 1.0)
    if len(deep) == 0:
        return None
    for _ in range(tries):
        if start == "surface":
            origin = outline[int(rng.integers(len(outline)))]
            direction = np.array([cy, cx]) - origin
            direction /= max(np.hypot(*direction), 1e-9)
            direction = _rotate(direction, rng.normal(0.0, 0.35))
        else:
            origin = deep[int(rng.integers(len(deep)))]
            direction = _rotate(np.array([1.0, 0.0]), rng.uniform(0, 2 * np.pi))
        target = _reachable_target(origin, direction, 1.4 * length_px + 2.0, depth)
        if target is None:
            continue
        path, _ = route_through_array(cost, tuple(origin), tuple(target), fully_connected=True, geometric=True)
        path = _truncate(np.asarray(path, dtype=np.int64), length_px)
        if path is None:
            continue
        if start == "inside" and depth[path[:, 0], path[:, 1]].min() < EDGE_CLEARANCE_PX:
            continue
        return path
    return None


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _reachable_target(origin: np.ndarray, direction: np.ndarray, reach_px: float, depth: np.ndarray):
    """The farthest point along the ray, up to `reach_px`, that lies deep inside the section."""
    for r in np.arange(reach_px, 1.0, -1.0):
        p = np.round(origin + r * direction).astype(int)
        if 0 <= p[0] < depth.shape[0] and 0 <= p[1] < depth.shape[1] and depth[p[0], p[1]] >= EDGE_CLEARANCE_PX:
            return p
    return None


def draw_spec(cfg: SynthConfig, rng: np.random.Generator) -> ParticleSpec:
    """An intact particle as the generator draws one: log-normal sphere size, near-equatorial cut."""
    p = cfg.particle
    lo, hi = (float(v) for v in p.d_range_um)
    d = float(np.clip(float(p.d50_um) * math.exp(float(p.d_log_sd) * rng.standard_normal()), lo, hi))
    offset = float(cfg.crops.max_offset_frac) * 0.5 * d * rng.uniform(-1.0, 1.0)
    return ParticleSpec(
        sphere_diameter_um=d,
        offset_um=offset,
        grain_width_um=float(rng.uniform(*p.grain_width_um)),
        grain_aspect=float(rng.uniform(*p.grain_aspect)),
        class_name="intact",
    )


def draw_section(cfg: SynthConfig, pixel_size_um: float, crack: CrackSpec | None, rng: np.random.Generator,
                 tries: int = 20) -> Section:
    """An intact generator particle (grains, pores) with one crack of `crack`'s size drawn in (or none)."""
    for _ in range(tries):
        lp = render_particle(cfg, draw_spec(cfg, rng), pixel_size_um, rng)
        rows, cols = np.nonzero(lp.mask)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        mask, phases, grains = lp.mask[box], lp.phases[box].copy(), lp.grains[box]
        boundary = lp.boundary[box]
        if crack is None:
            return Section(mask, phases, grains, boundary, "intact", None, np.zeros((0, 2), np.int64))
        path = crack_centreline(mask, boundary, crack.length_um / pixel_size_um, crack.start, rng)
        if path is None:
            continue  # this section cannot hold the crack: draw another particle
        painted, class_name = canonical_class(mask, paint_crack(path, crack.width_px, mask.shape))
        phases[painted] = Phase.CRACK
        return Section(mask, phases, grains, boundary & (phases == Phase.SOLID), class_name, crack, path)
    raise RuntimeError(f"no section held a crack of {crack} in {tries} tries")


@dataclass
class Field:
    """One rendered field and, per true instance id, the section drawn there."""

    image: SEMImage
    instances: np.ndarray
    sections: dict[int, Section]


def layout_fields(sections: list[Section], pixel_size_um: float, field_px: int, rng: np.random.Generator):
    """Shelf layout: left to right with ~`GAP_UM` of matrix between sections, a new row below, a new
    field when the rows are full. Yields (shape, [(row, col, section), ...])."""
    gap = int(round(GAP_UM / pixel_size_um))
    placed, y, x, row_h = [], gap, gap, 0
    for s in sections:
        h, w = s.mask.shape
        if x + w + gap > field_px and placed and x > gap:  # the row is full
            y, x, row_h = y + row_h + gap, gap, 0
        if y + h + gap > field_px and placed:  # the field is full
            yield (field_px, field_px), placed
            placed, y, x, row_h = [], gap, gap, 0
        jitter = int(rng.integers(0, gap // 2 + 1))
        placed.append((y + jitter, x, s))
        x += w + gap
        row_h = max(row_h, h + jitter)
    if placed:
        height = max(field_px, max(r + s.mask.shape[0] for r, _, s in placed) + gap)
        width = max(field_px, max(c + s.mask.shape[1] for _, c, s in placed) + gap)
        yield (height, width), placed


def render_field(cfg: SynthConfig, shape: tuple[int, int], placed, pixel_size_um: float,
                 rng: np.random.Generator, source: str) -> Field:
    """The placed sections on a matrix background, imaged as the generator images a field."""
    instances = np.zeros(shape, np.uint32)
    phases = np.zeros(shape, np.uint8)
    grains = np.full(shape, -1, np.int64)
    boundary = np.zeros(shape, bool)
    sections: dict[int, Section] = {}
    grain_base = 0
    for pid, (r, c, s) in enumerate(placed, start=1):
        win = (slice(r, r + s.mask.shape[0]), slice(c, c + s.mask.shape[1]))
        instances[win][s.mask] = pid
        phases[win][s.mask] = s.phases[s.mask]
        grains[win][s.mask] = s.grains[s.mask] + grain_base
        grain_base += int(s.grains.max()) + 1
        boundary[win] |= s.boundary & s.mask
        sections[pid] = s
    params = ImagingParams.draw(cfg.imaging, rng)
    pixels = render_image(phases, instances, grains, boundary, pixel_size_um, params, rng)
    image = SEMImage(pixels=pixels, pixel_size_um=pixel_size_um, pixel_size_source="synthetic", source=source)
    return Field(image, instances, sections)


def make_fields(preset: str, pixel_size_um: float, per_cell: int, intact: int, seed: int,
                synth_overrides: list[str], field_px: int):
    """Every cracked and intact section of one preset and pixel size, shuffled onto fields."""
    cfg = load_config(preset, synth_overrides)
    cell = PRESETS.index(preset) * 10 + PIXEL_SIZES_UM.index(pixel_size_um)
    rng = np.random.default_rng([seed, cell])
    cracks = [CrackSpec(w, length, STARTS[0]) for w in WIDTHS_PX for length in LENGTHS_UM for _ in range(per_cell)]
    # Surface and inside alternate over the whole list: balanced in every cell for an even per_cell,
    # and both present even with one section per cell.
    cracks = [replace(c, start=STARTS[k % 2]) for k, c in enumerate(cracks)]
    sections = [draw_section(cfg, pixel_size_um, c, rng) for c in cracks]
    sections += [draw_section(cfg, pixel_size_um, None, rng) for _ in range(intact)]
    order = rng.permutation(len(sections))
    sections = [sections[i] for i in order]
    for k, (shape, placed) in enumerate(layout_fields(sections, pixel_size_um, field_px, rng)):
        yield render_field(cfg, shape, placed, pixel_size_um, rng, f"crackvis_{preset}_{pixel_size_um:g}_{k:03d}")


@dataclass
class Pipeline:
    """What `analyse_field` needs: built once from the composed infer config."""

    detector: object
    models: object  # fracscope.analysis.Models
    analysis: object


def build_pipeline(overrides: list[str]) -> Pipeline:
    """The infer config with `overrides`, composed as `infer.py` composes it, turned into its parts."""
    from fracscope.cli import compose
    from fracscope.detect import build_detector
    from fracscope.analysis import Models
    from fracscope.pipeline import RunSettings

    settings = RunSettings.from_config(compose("infer", *overrides))
    models = Models.for_settings(settings.analysis, settings)
    return Pipeline(build_detector(settings.detect), models, replace(settings.analysis, keep_crops=False))


@dataclass(frozen=True)
class Prediction:
    """What the pipeline said about one predicted particle."""

    class_name: str
    judged: bool  # neither cut by the image border nor too small to judge (the ones the summary counts)
    measurements: dict  # the particle's measurement columns (crack measures included) and class probabilities


def analyse_field(image: SEMImage, run: Pipeline) -> tuple[np.ndarray, dict[int, Prediction]]:
    """Predicted instance map and a `Prediction` per predicted id. The one call into the pipeline's
    internals: when they change, only this function follows."""
    from fracscope.analysis import analyse_image

    result = analyse_image(image, image.source, "bench", run.detector, run.models, run.analysis)
    return result.instances, {
        p.particle_id: Prediction(p.class_name, not (p.touches_border or p.too_small),
                                  {**p.measurements, **p.network_probs,
                                   **{f"p_{n}": float(v) for n, v in zip(CLASS_NAMES, p.probs)}})
        for p in result.particles
    }


def score_field(field: Field, pred: np.ndarray, predictions: dict[int, Prediction], preset: str,
                pixel_size_um: float):
    """One row per true section: its crack, whether it was detected (IoU >= 0.5) and the predicted class."""
    from fracscope.detect import match_instances

    matched = dict(match_instances(field.instances, pred, iou=0.5).pairs)
    rows = []
    for pid, s in field.sections.items():
        p = matched.get(pid)
        rows.append({
            "preset": preset,
            "pixel_size_um": pixel_size_um,
            "width_px": s.crack.width_px if s.crack else 0,
            "length_um": s.crack.length_um if s.crack else 0.0,
            "start": s.crack.start if s.crack else "",
            "true_class": s.class_name,
            "detected": p in predictions,
            "pred_class": predictions[p].class_name if p in predictions else "",
            "judged": bool(predictions[p].judged) if p in predictions else False,
            **{f"pred_{k}": v for k, v in (predictions[p].measurements if p in predictions else {}).items()},
        })
    return rows


def _rate(k: int, n: int) -> str:
    return f"{100 * k / n:.0f} % ({k}/{n})" if n else "-"


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report(table) -> None:
    """Markdown tables of damage recall, false-damage rate and detection recall."""
    table = table.assign(damaged=table["pred_class"].isin(["mildly_damaged", "broken"]))
    cols = [(p, s) for p in PRESETS for s in PIXEL_SIZES_UM]
    head = [f"{p} {s:g} µm/px" for p, s in cols] + ["all"]
    cracked = table[(table["width_px"] > 0) & table["detected"]]

    def cells(sub, flag: str = "damaged") -> list[str]:
        groups = [sub[(sub["preset"] == p) & (sub["pixel_size_um"] == s)] for p, s in cols] + [sub]
        return [_rate(int(g[flag].sum()), len(g)) for g in groups]

    print("\n### Recall of damaged (predicted mildly_damaged or broken) on detected cracked sections")
    rows = [[str(w), f"{length:g}"] + cells(cracked[(cracked["width_px"] == w) & (cracked["length_um"] == length)])
            for w in WIDTHS_PX for length in LENGTHS_UM]
    rows += [[str(w), "all"] + cells(cracked[cracked["width_px"] == w]) for w in WIDTHS_PX]
    print(_markdown(["width px", "length µm"] + head, rows))
    print("\n### The same by where the crack lies (surface: opens to the outline; inside: clear of it)")
    rows = [[start, str(w)] + cells(cracked[(cracked["start"] == start) & (cracked["width_px"] == w)])
            for start in STARTS for w in WIDTHS_PX]
    print(_markdown(["start", "width px"] + head, rows))
    intact = table[(table["width_px"] == 0) & table["detected"]]
    print("\n### False-damage rate on detected intact sections (grains and pores, no crack)")
    print(_markdown(["sections"] + head, [["intact"] + cells(intact)]))
    print("\n### Detection recall (IoU >= 0.5) of all true sections; the unmatched ones are left out above")
    rows = [[name] + cells(sub, "detected") for name, sub in
            (("cracked", table[table["width_px"] > 0]), ("intact", table[table["width_px"] == 0]))]
    print(_markdown(["sections"] + head, rows))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-cell", type=int, default=20, help="cracked sections per width x length x preset x pixel size")
    ap.add_argument("--intact-per-cell", type=int, default=None,
                    help="crack-free sections per preset x pixel size (default 4 x --per-cell)")
    ap.add_argument("--seed", type=int, default=101, help="a tuning seed: never 0 (training) or 9001 (held-out)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 section per cell, 4 intact (< 1 min)")
    ap.add_argument("--field-px", type=int, default=1280, help="side of a field in pixels")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="infer override (compose)")
    ap.add_argument("--synth", action="append", default=[], metavar="KEY=VALUE",
                    help="fracscope.synth override for the sections (load_config), e.g. imaging.noise_sd=0.03")
    ap.add_argument("--csv", default=None, help="also write one row per true section here")
    args = ap.parse_args(argv)
    if args.seed in (0, 9001):
        ap.error("--seed must differ from the training (0) and held-out (9001) seeds")
    per_cell = 1 if args.quick else args.per_cell
    intact = args.intact_per_cell if args.intact_per_cell is not None else (4 if args.quick else 4 * per_cell)

    import pandas as pd
    from throughput import matmul_peak_gflops

    t0, cpu0 = time.perf_counter(), time.process_time()
    run = build_pipeline(args.set)
    rows, n_fields, t_gen, t_pipe = [], 0, 0.0, 0.0
    for preset in PRESETS:
        for px in PIXEL_SIZES_UM:
            fields = make_fields(preset, px, per_cell, intact, args.seed, args.synth, args.field_px)
            while True:
                t = time.perf_counter()
                field = next(fields, None)
                t_gen += time.perf_counter() - t
                if field is None:
                    break
                t = time.perf_counter()
                pred, predictions = analyse_field(field.image, run)
                t_pipe += time.perf_counter() - t
                rows += score_field(field, pred, predictions, preset, px)
                n_fields += 1
    table = pd.DataFrame(rows)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(f"crack visibility: {len(table)} sections on {n_fields} fields "
          f"({per_cell} per width x length x preset x pixel-size cell, {intact} intact per preset x pixel size), "
          f"seed {args.seed}")
    print(f"pipeline: {' '.join(args.set) or 'infer defaults'}; synth: {' '.join(args.synth) or 'config defaults'}")
    report(table)
    print(f"\nwall {wall:.0f} s (generation {t_gen:.0f} s, pipeline {t_pipe:.0f} s; CPU {cpu:.0f} s); "
          f"onnxruntime fp32 MatMul peak {matmul_peak_gflops():.0f} GFLOP/s; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("reproduce: python bench/crack_visibility.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


if __name__ == "__main__":
    main()
