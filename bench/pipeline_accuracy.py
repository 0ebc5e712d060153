"""Whole-pipeline accuracy on held-out synthetic electrode fields against their ground truth.

    python bench/pipeline_accuracy.py [--particles 2000] [--model models/fracscope_default.onnx]
                                      [--set detect.foreground_threshold=0.6 ...] [--tuning-seed 555]
                                      [--pairs-csv pairs.csv] [--save-crops crops.npz]
                                      [--synth particle.short_crack_fraction=0.5 ...]  (tuning fields only)
                                      [--look infiltrated]  (the same fields in another look, held-out too)

Generates wide fields with the frozen `conf/synth/heldout.yaml` (half gp, half p), writes them
as TIFFs with their pixel size, runs `infer.py`'s `run(cfg)` on them, and scores:
- detection F1 at IoU 0.5 and count error, against every ground-truth section;
- class macro-F1 and class fractions, on matched particles that are whole (not cut by the border)
  and large enough to judge (the ones the summary counts);
- porosity MAE and bias in percentage points on the same particles;
- the predicted masks' area against the true ones on the same particles (mean and median ratio).

`--tuning-seed N` scores fields of the *training* synth config instead (same 0.07 µm/px, imaging
drawn per field from the training ranges, seed N, never 0 or the held-out 9001). Settings are
chosen there (`--set`) and then checked once on the held-out fields, so that nothing is fitted
to the held-out set.

`--look NAME` renders the same fields (same particles, phases and classes: a look changes the
image only, `tests/test_synth_looks.py`) in one of the generator's looks, e.g. `infiltrated`
(Pt-filled pore space, BSE contrast); it is an evaluation, allowed on the held-out fields.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

from fracscope.classify import HEAD_FEATURES, SECTION_FEATURES  # noqa: E402
from fracscope.cli import compose  # noqa: E402
from fracscope.detect import match_instances  # noqa: E402
from fracscope.io import write_image_tiff  # noqa: E402
from fracscope.scores import ClassScores  # noqa: E402
from fracscope.synth import generate_electrode, load_config  # noqa: E402
from fracscope.types import CLASS_NAMES  # noqa: E402


def electrode_fields(n_particles: int, tuning_seed: int | None = None, synth: tuple[str, ...] = (),
                     look: str | None = None):
    """(preset, index, AnnotatedImage) of the held-out fields, or of the tuning fields of `tuning_seed`
    with the synth overrides `synth` (tuning fields only); rendered in `look` when given."""
    from fracscope.synth import with_overrides

    for preset in ("gp", "p"):
        if tuning_seed is None:
            cfg = load_config(preset, heldout=True)
        else:
            cfg = with_overrides(replace(tuning_config(preset), seed=tuning_seed), synth)
        if look is not None:
            cfg = with_overrides(cfg, [f"imaging.looks=[{look}]"])
        for i, item in enumerate(generate_electrode(cfg, n_particles // 2, seed=int(cfg.seed), workers=2)):
            yield preset, i, item


def write_fields(out: Path, n_particles: int, tuning_seed: int | None = None, synth: tuple[str, ...] = (),
                 look: str | None = None) -> dict[str, object]:
    truth = {}
    for preset, i, item in electrode_fields(n_particles, tuning_seed, synth, look):
        (out / preset).mkdir(parents=True, exist_ok=True)
        write_image_tiff(out / preset / f"field{i:03d}.tif", item.image.pixels, item.image.pixel_size_um)
        truth[f"{preset}__field{i:03d}"] = item
    return truth


def tuning_config(preset: str):
    """Training synth config at the held-out fields' pixel size, imaging drawn per field as in training.

    The ranges are the default experiment's `data.synth.imaging_ranges`, so tuning fields look
    like the training set, not like the held-out set (whose imaging is fixed and shifted).
    """
    from omegaconf import OmegaConf

    held = load_config(preset, heldout=True)
    ranges = OmegaConf.load(REPO / "conf" / "data" / "synth.yaml").synth.imaging_ranges
    cfg = load_config(preset)
    randomize = {str(k): (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}
    return replace(cfg, electrode=replace(cfg.electrode, pixel_size_um=held.electrode.pixel_size_um),
                   imaging=replace(cfg.imaging, randomize=randomize))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 2,000 (the paper's count, ~700 whole matched sections): with 600 (~226) macro-F1 moved by ±0.02-0.03.
    ap.add_argument("--particles", type=int, default=2000)
    ap.add_argument("--model", default=None, help="crop model file (default: the shipped model)")
    ap.add_argument("--phase-model", default=None, help="native phase model file (default: the shipped model)")
    ap.add_argument("--section-model", default=None, help="section net file (default: the shipped one)")
    ap.add_argument("--detector", default="classical")
    ap.add_argument("--classify", default="native", choices=["native", "head", "topology"])
    ap.add_argument("--segmenter", default="model", choices=["model", "crops", "threshold"])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra infer.py override")
    ap.add_argument("--tuning-seed", type=int, default=None,
                    help="score fields of the training synth config with this seed instead of the held-out ones")
    ap.add_argument("--synth", action="append", default=[], metavar="KEY=VALUE",
                    help="synth override of the tuning fields, e.g. particle.short_crack_fraction=0.5")
    ap.add_argument("--look", default=None, help="render the fields in this generator look (e.g. infiltrated)")
    ap.add_argument("--min-diameter-um", type=float, default=1.5, help="the detector's minimum section size")
    ap.add_argument("--pairs-csv", default=None, help="also write every matched pair (truth beside prediction) here")
    ap.add_argument("--save-crops", default=None, metavar="NPZ",
                    help="also save the model's input crops of the judged sections, with their true classes, for "
                         "bench/class_variants.py (detects the fields once more)")
    args = ap.parse_args()
    if args.synth and args.tuning_seed is None:
        ap.error("--synth changes tuning fields only (the held-out config is frozen)")
    if args.tuning_seed is not None and args.tuning_seed in (0, 9001):
        ap.error("--tuning-seed must differ from the training (0) and held-out (9001) seeds")

    from fracscope.pipeline import run

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fracscope_pipeacc_"))
    t0 = time.perf_counter()
    truth = write_fields(work / "fields", args.particles, args.tuning_seed, tuple(args.synth), args.look)
    t_gen = time.perf_counter() - t0
    overrides = [f"input={work / 'fields'}", f"output={work / 'out'}", f"detect={args.detector}",
                 f"classify={args.classify}", f"segmenter={args.segmenter}"]
    if args.model:
        overrides.append(f"model_path={args.model}")
    if args.phase_model:
        overrides.append(f"phase_model_path={args.phase_model}")
    if args.section_model:
        overrides.append(f"section_model_path={args.section_model}")
    overrides += args.set
    cfg = compose("infer", *overrides)
    outcome = run(cfg)
    table = pd.read_csv(work / "out" / "particles.csv")

    tp = fp = fn = n_true = n_pred = n_true_judgeable = n_pred_of_small = 0
    rows = []
    pixels = PixelScores()
    for stem, item in truth.items():
        pred = tifffile.imread(work / "out" / "instances" / f"{stem}.tif")
        gt = item.instances
        m = match_instances(gt, pred, iou=0.5)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        n_true += len(item.particles)
        n_true_judgeable += sum(p.measurements["eq_diameter_um"] >= args.min_diameter_um for p in item.particles)
        n_pred += len(np.unique(pred[pred > 0]))  # ids can have gaps (sections dropped after the trim)
        ann = {p.particle_id: p for p in item.particles}
        n_pred_of_small += sum(ann[int(g)].measurements["eq_diameter_um"] < args.min_diameter_um for g, _ in m.pairs)
        gt_area, pred_area = np.bincount(gt.ravel()), np.bincount(pred.ravel().astype(np.int64))
        img_rows = table[table["image"].astype(str) == str(work / "fields" / f"{stem.replace('__', '/')}.tif")]
        by_id = img_rows.set_index("particle_id")
        for g, p in m.pairs:
            a = ann[int(g)]
            r = by_id.loc[int(p)]
            rows.append({
                "true_class": CLASS_NAMES.index(a.class_name),
                "pred_class": CLASS_NAMES.index(r["class"]),
                "image": stem,
                "true_id": int(g),
                "pred_id": int(p),
                "true_diameter_um": a.measurements["eq_diameter_um"],
                "true_porosity": a.measurements["porosity_pct"],
                "pred_porosity": r["porosity_pct"],
                **{f"true_{c}": a.measurements.get(c, np.nan) for c in PROFILE_COLUMNS + ["crack_length_um"]},
                **{f"pred_{c}": r[c] for c in PROFILE_COLUMNS + FEATURE_COLUMNS if c in r.index},
                "area_ratio": pred_area[int(p)] / gt_area[int(g)],
                "judged": (not bool(r["touches_border"])) and (not bool(r["too_small"]))
                and not a.measurements.get("touches_border", 0),
            })
        phase_file = work / "out" / "phases" / f"{stem}.tif"
        if phase_file.exists() and item.phases is not None:
            judged_ids = [(int(g), int(p)) for g, p in m.pairs
                          if not bool(by_id.loc[int(p)]["touches_border"]) and not bool(by_id.loc[int(p)]["too_small"])
                          and not ann[int(g)].measurements.get("touches_border", 0)]
            pixels.add(gt, item.phases, pred, tifffile.imread(phase_file), judged_ids)
    pairs = pd.DataFrame(rows)
    if args.pairs_csv:
        pairs.to_csv(args.pairs_csv, index=False)
    judged = pairs[pairs["judged"]]
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    classes = ClassScores.from_labels(judged["true_class"].to_numpy(), judged["pred_class"].to_numpy())
    mf1, recalls = classes.macro_f1, classes.recall
    true_frac = np.bincount(judged["true_class"], minlength=3) / max(len(judged), 1)
    pred_frac = np.bincount(judged["pred_class"], minlength=3) / max(len(judged), 1)
    err = judged["pred_porosity"] - judged["true_porosity"]

    print(f"{'held-out' if args.tuning_seed is None else 'tuning'} electrode fields: {len(truth)} images, {n_true} true sections (generated in {t_gen:.0f} s)")
    print(f"pipeline: detect={args.detector} segmenter={args.segmenter} classify={args.classify} "
          f"model={args.model or 'shipped default'} {' '.join(args.set)}; {outcome.n_particles} particles in {outcome.wall_s:.1f} s")
    print(f"detection  F1@0.5 {f1:.3f} (precision {precision:.3f}, recall {recall:.3f}); "
          f"count error {100 * (n_pred - n_true) / n_true:+.2f} % against all {n_true} sections, "
          f"{100 * (n_pred - n_true_judgeable) / n_true_judgeable:+.2f} % against the {n_true_judgeable} "
          f"of at least {args.min_diameter_um} µm (the detector's minimum)")
    print(f"           predictions matched to true sections under {args.min_diameter_um} µm: {n_pred_of_small}; "
          f"unmatched predictions: {fp}")
    print(f"classes on {len(judged)} matched whole sections: macro-F1 {mf1:.3f}; recall "
          + ", ".join(f"{n} {r:.3f}" for n, r in zip(CLASS_NAMES, recalls)))
    print("class fractions true vs pred: " + ", ".join(
        f"{n} {100 * t:.1f} % vs {100 * p:.1f} % ({100 * (p - t):+.1f} pp)" for n, t, p in zip(CLASS_NAMES, true_frac, pred_frac)))
    print(f"porosity MAE {err.abs().mean():.3f} pp, bias {err.mean():+.3f} pp (n={len(err)})")
    preset = judged["image"].str.split("__").str[0]
    for name in sorted(preset.unique()):
        sel = judged[preset == name]
        e = sel["pred_porosity"] - sel["true_porosity"]
        mean_t, mean_p = sel["true_porosity"].mean(), sel["pred_porosity"].mean()
        print(f"  {name}: porosity MAE {e.abs().mean():.3f} pp, bias {e.mean():+.3f} pp, mean {mean_p:.2f} % vs true "
              f"{mean_t:.2f} % ({100 * (mean_p / mean_t - 1):+.1f} %) (n={len(sel)}); class fractions true vs pred: "
              + ", ".join(f"{n} {100 * t:.1f} vs {100 * q:.1f}" for n, t, q in zip(
                  CLASS_NAMES, np.bincount(sel["true_class"], minlength=3) / len(sel),
                  np.bincount(sel["pred_class"], minlength=3) / len(sel))))
        print("    porosity error by section size (fifths of the true diameter): " + size_fifths(sel))
        if f"pred_{PROFILE_COLUMNS[0]}" in sel:
            print("    radial profile (mean porosity inside f·R, %), true -> pred: " + ", ".join(
                f"{c.split('_')[1]} {sel['true_' + c].mean():.2f} -> {sel['pred_' + c].mean():.2f}"
                for c in PROFILE_COLUMNS))
    if pixels.n_sections:
        print(pixels.describe())
    if "pred_crack_length_um" in judged:
        wide = judged[judged["true_crack_length_um"] > 0]
        ratio_len = wide["pred_crack_length_um"].sum() / max(wide["true_crack_length_um"].sum(), 1e-9)
        print(f"crack length, sum predicted / sum true over {len(wide)} cracked sections: {ratio_len:.3f}; "
              f"median per-section ratio {(wide['pred_crack_length_um'] / wide['true_crack_length_um']).median():.3f}")
    ratio = judged["area_ratio"]
    print(f"mask area / true area on the same sections: mean {ratio.mean():.3f}, median {ratio.median():.3f}")
    if args.save_crops:
        n = save_judged_crops(args.save_crops, cfg, work / "fields", judged)
        print(f"saved the model's input crops of {n} judged sections to {args.save_crops}")
    print("reproduce: python bench/pipeline_accuracy.py " + " ".join(sys.argv[1:]))


def size_fifths(sel: pd.DataFrame) -> str:
    """Porosity bias / MAE (pp) of the judged pairs `sel` in fifths of their true diameter: the per-section
    error depends on the section's size (small gp sections read low), which the preset's mean hides."""
    if len(sel) < 5:
        return "too few sections"
    fifth = pd.qcut(sel["true_diameter_um"], 5, labels=False, duplicates="drop")
    parts = []
    for _, part in sel.groupby(fifth):
        e = part["pred_porosity"] - part["true_porosity"]
        d = part["true_diameter_um"]
        parts.append(f"{d.min():.1f}-{d.max():.1f} µm {e.mean():+.2f} / {e.abs().mean():.2f}")
    return ", ".join(parts) + " (bias / MAE pp)"


PROFILE_COLUMNS = [f"porosity_r{f}_pct" for f in (50, 60, 70, 80, 90, 100)]
FEATURE_COLUMNS = ["eq_diameter_um", "crack_pct", "crack_length_um", "crack_reach_frac", "crack_reaches_surface",
                   "n_fragments", "crack_splits_section", "crack_splits_bridged", "longest_crack_frac", "n_cracks", "p_intact",
                   "p_mildly_damaged", "p_broken", *SECTION_FEATURES, *HEAD_FEATURES]


class PixelScores:
    """Pore and crack pixel scores on the image grid, inside the true sections of judged matched particles.

    - pore IoU over all pores, and over pores at least 3 px across (true pore components that survive an
      opening with a 3x3 square, against the predicted pore components that touch them);
    - pore and crack F1 with a 1-pixel tolerance: a predicted pixel is right when a true one lies within
      1 px (8-neighbourhood), a true pixel is found when a predicted one lies within 1 px.
    """

    def __init__(self) -> None:
        self.n_sections = 0
        self.c = dict.fromkeys(("pore_i", "pore_u", "big_i", "big_u"), 0)
        self.tol = {k: [0, 0, 0, 0] for k in ("pore", "crack")}  # pred ok, pred total, true found, true total

    def add(self, gt_instances, gt_phases, pred_instances, pred_phases, pairs) -> None:
        from scipy import ndimage as ndi

        boxes = ndi.find_objects(gt_instances)
        square = np.ones((3, 3), bool)
        for g, _p in pairs:
            sl = boxes[g - 1]
            if sl is None:
                continue
            region = gt_instances[sl] == g
            t_ph, p_ph = gt_phases[sl], pred_phases[sl]
            self.n_sections += 1
            t_pore, p_pore = region & (t_ph == 2), region & (p_ph == 2)
            self.c["pore_i"] += int((t_pore & p_pore).sum())
            self.c["pore_u"] += int((t_pore | p_pore).sum())
            big = ndi.binary_propagation(ndi.binary_opening(t_pore, square), mask=t_pore)
            if big.any():
                lab, _ = ndi.label(p_pore, structure=square)
                touching = np.unique(lab[big & (lab > 0)])
                p_big = np.isin(lab, touching[touching > 0])
                self.c["big_i"] += int((big & p_big).sum())
                self.c["big_u"] += int((big | p_big).sum())
            for name, code in (("pore", 2), ("crack", 3)):
                t, p = region & (t_ph == code), region & (p_ph == code)
                td, pd_ = ndi.binary_dilation(t, square), ndi.binary_dilation(p, square)
                acc = self.tol[name]
                acc[0] += int((p & td).sum())
                acc[1] += int(p.sum())
                acc[2] += int((t & pd_).sum())
                acc[3] += int(t.sum())

    def describe(self) -> str:
        c = self.c
        parts = [f"pixels on the image grid over {self.n_sections} judged sections: pore IoU "
                 f"{c['pore_i'] / max(c['pore_u'], 1):.3f} (all pores), {c['big_i'] / max(c['big_u'], 1):.3f} "
                 "(pores >= 3 px across)"]
        for name, (ok, n_pred, found, n_true) in self.tol.items():
            prec, rec = ok / max(n_pred, 1), found / max(n_true, 1)
            parts.append(f"{name} F1 (1-px tolerance) {2 * prec * rec / max(prec + rec, 1e-9):.3f} "
                         f"(precision {prec:.3f}, recall {rec:.3f})")
        return "; ".join(parts)


def save_judged_crops(dest: str, cfg, fields: Path, judged: pd.DataFrame) -> int:
    """The crops the model saw for the judged sections (the detector is deterministic, so detecting
    again gives the same instances and crops as the run), saved as float16 with the truth beside them."""
    from omegaconf import OmegaConf

    from fracscope.assets import resolve_model
    from fracscope.detect import build_detector
    from fracscope.io import ReadFailure, iter_images
    from fracscope.locate import locate_particles
    from fracscope.analysis import image_stem
    from fracscope.runtime import load_backend

    meta = load_backend(resolve_model(cfg.model_path)).metadata
    detector = build_detector(OmegaConf.to_container(cfg.detect, resolve=True))
    wanted = {(str(s), int(i)) for s, i in zip(judged["image"], judged["pred_id"])}
    found = {}
    for image in iter_images(fields):
        if isinstance(image, ReadFailure):
            raise RuntimeError(f"could not read {image.source}: {image.error}")
        stem = image_stem(image, fields)
        located = locate_particles(image, detector, meta.crop_spec)
        for c in located.crops:
            if (stem, c.particle_id) in wanted:
                found[(stem, c.particle_id)] = np.stack([c.image, c.mask]).astype(np.float16)
    keys = list(zip(judged["image"].astype(str), judged["pred_id"].astype(int)))
    missing = [k for k in keys if k not in found]
    if missing:
        raise RuntimeError(f"{len(missing)} judged sections were not found on detecting again, e.g. {missing[0]}")
    np.savez_compressed(
        dest,
        crops=np.stack([found[k] for k in keys]),
        true_class=judged["true_class"].to_numpy(),
        pipeline_class=judged["pred_class"].to_numpy(),
        true_diameter_um=judged["true_diameter_um"].to_numpy(),
        image=np.array([k[0] for k in keys]),
        particle_id=np.array([k[1] for k in keys]),
        class_names=np.array(CLASS_NAMES),
    )
    return len(keys)


if __name__ == "__main__":
    main()
