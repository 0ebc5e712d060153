"""The pipeline on the real development set (`data/real/`): detection and classes against hand annotations.

    python bench/real_images.py [--detector models/fracscope_detector.onnx] [--phase-model ...] [--model ...]
                                [--images pt_bse samba_3phase qbi_xct] [--workdir DIR]
                                [--degrade gain:0.2|vignette:0.3|ramp:0.15|noise:0.05|blur:1.5|jpeg:30]
                                [--set KEY=VALUE ...]

For each annotated image (see data/real/README.md) `infer.py`'s `run(cfg)` runs twice:
(i) with no pixel size (the learned detector estimates one, `detect/scale.py`), and
(ii) with the pixel size implied by the annotations: the one at which the area-weighted mean equivalent
diameter of the annotated sections not cut by the border equals `REFERENCE_DIAMETER_UM` (10.7 µm), the
statistic and value the shipped scale estimator aims at (the training generator's calendered fields:
d50 11 µm spheres cut at random heights, 40 % fines). The pixel size that would put the median annotated
section at the generator's d50 (`conf/synth/config.yaml` particle.d50_um) is printed beside it.

Scores per image and run:
- detection recall at IoU 0.5 (`fracscope.detect.matching.match_instances`) over all annotated sections,
  border-cut ones included;
- false detections: unmatched detections as a share of scored detections. Unmatched detections whose
  equivalent diameter is under the image's annotation minimum (`min_diameter_px` in
  data/real/annotate.py) are not counted false (the protocol leaves such sections unannotated) and are
  counted apart; a detection under the minimum that matches an annotated section counts as found
  (until session 18 it was dropped before matching, which made 4 of image A's sections "missed");
- class agreement on matched sections whose annotated class is not `unsure`: share equal and the 3x3
  confusion (rows annotated, columns predicted).
Image C is annotated only inside a rectangle: the pipeline runs on that rectangle plus a margin (the
phase model would otherwise enlarge the whole slice 4-7 times), and only detections whose centroid
lies in the rectangle are scored. Each run uses pore_polarity=auto, as a user's default run; when auto
judges an image's pores bright and the phase model was never trained on them (an error row), that image is
run again with pore_polarity=dark (printed).

`--degrade KIND:S` (alias `--drift`) alters each image before the runs, as a lab's imaging would; no pixel
moves, so the annotations stay valid. Uneven illumination: `gain` multiplies column by column from 1 - S (left)
to 1 + S (right); `vignette` multiplies by 1 - S r^2 / 2 (r = 1 at the middle of each edge, sqrt(2) at the
corners); `ramp` adds -S to +S of the image's 0.5-99.5 % grey range from left to right. A fast or low-current
scan: `noise` adds Gaussian noise of SD S times that grey range (seeded, the same on every run). Focus:
`blur` is a Gaussian of sigma S px. A lossy copy: `jpeg` re-encodes at JPEG quality S (a 16-bit image
first goes to 8 bits over its own range).
`--set` passes infer.py overrides (e.g. `even_illumination=false`).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
from skimage import measure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "real"
sys.path.insert(0, str(DATA))

from annotate import IMAGES, read_grey  # noqa: E402

from fracscope.detect.matching import match_instances  # noqa: E402
from fracscope.detect.scale import REFERENCE_DIAMETER_UM  # noqa: E402
from fracscope.types import CLASS_NAMES  # noqa: E402

# Margin around image C's annotated rectangle that the pipeline also sees (px): sections crossing the
# rectangle's edge stay whole, and the detector has context.
REGION_MARGIN_PX = 40


@dataclass
class Annotation:
    """One image's annotation: labels (uint16), classes by id, and what the protocol says about it."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: dict[int, str]
    min_diameter_px: float
    region: tuple[int, int, int, int] | None


def load_annotation(name: str) -> Annotation:
    spec = IMAGES[name]
    folder = DATA / name
    with open(folder / "particles.csv") as f:
        classes = {int(r["id"]): r["class"] for r in csv.DictReader(f)}
    return Annotation(
        name=name,
        image=read_grey(folder / spec.file),
        labels=tifffile.imread(folder / "labels.tif"),
        classes=classes,
        min_diameter_px=spec.min_diameter_px,
        region=spec.region,
    )


def implied_pixel_size_um(labels: np.ndarray, target_um: float = REFERENCE_DIAMETER_UM) -> float:
    """Pixel size at which the area-weighted mean equivalent diameter of the whole sections is `target_um`."""
    h, w = labels.shape
    areas, diameters = [], []
    for p in measure.regionprops(labels):
        r0, c0, r1, c1 = p.bbox
        if r0 == 0 or c0 == 0 or r1 == h or c1 == w:
            continue
        areas.append(p.area)
        diameters.append(p.equivalent_diameter_area)
    mean_px = float(np.average(diameters, weights=areas))
    return target_um / mean_px


def median_rule_pixel_size_um(labels: np.ndarray) -> float:
    """Pixel size at which the median whole annotated section equals the generator's d50 (for comparison)."""
    from fracscope.synth import load_config

    d50_um = float(load_config().particle.d50_um)
    h, w = labels.shape
    d = [p.equivalent_diameter_area for p in measure.regionprops(labels)
         if p.bbox[0] > 0 and p.bbox[1] > 0 and p.bbox[2] < h and p.bbox[3] < w]
    return d50_um / float(np.median(d))


def window(ann: Annotation) -> tuple[slice, slice]:
    """The part of the image the pipeline sees: all of it, or C's rectangle plus a margin."""
    if ann.region is None:
        return slice(None), slice(None)
    x0, y0, x1, y1 = ann.region
    h, w = ann.labels.shape
    m = REGION_MARGIN_PX
    return slice(max(y0 - m, 0), min(y1 + m, h)), slice(max(x0 - m, 0), min(x1 + m, w))


def score(ann: Annotation, pred: np.ndarray, table: pd.DataFrame) -> tuple[int, int, int, int, int, np.ndarray]:
    """Match `pred` (on the window) against the annotation.

    Every detection (whose centroid lies in C's rectangle) may match an annotated section. Unmatched
    detections under the annotation minimum are not counted false (the protocol leaves such sections
    unannotated); a small detection that matches an annotated section still counts as found.

    Returns (matched, annotated, scored detections, unmatched scored detections, unmatched detections under
    the minimum, 3x3 class confusion on matched sections not annotated `unsure`).
    """
    rows, cols = window(ann)
    offset = (rows.start or 0, cols.start or 0)
    gt = ann.labels[rows, cols].astype(np.int64)
    pred = pred.astype(np.int64)
    keep = np.zeros(int(pred.max()) + 1, bool)
    small = set()
    for p in measure.regionprops(pred):
        if ann.region is not None:
            x0, y0, x1, y1 = ann.region
            cy, cx = p.centroid[0] + offset[0], p.centroid[1] + offset[1]
            if not (x0 <= cx < x1 and y0 <= cy < y1):
                continue
        keep[p.label] = True
        if p.equivalent_diameter_area < ann.min_diameter_px:
            small.add(p.label)
    scored = np.where(keep[pred], pred, 0)
    m = match_instances(gt, scored, iou=0.5)
    matched = {int(q) for _, q in m.pairs}
    unmatched = [int(q) for q in np.flatnonzero(keep) if int(q) not in matched]
    n_small = sum(q in small for q in unmatched)
    fp = len(unmatched) - n_small
    n_det = m.tp + fp
    by_id = table.set_index("particle_id")["class"] if len(table) else pd.Series(dtype=str)
    confusion = np.zeros((3, 3), int)
    for g, p in m.pairs:
        true = ann.classes[int(g)]
        if true == "unsure" or int(p) not in by_id.index:
            continue
        confusion[CLASS_NAMES.index(true), CLASS_NAMES.index(by_id.loc[int(p)])] += 1
    n_true = len(ann.classes)
    return m.tp, n_true, n_det, fp, n_small, confusion


DEGRADATIONS = ("gain", "vignette", "ramp", "noise", "blur", "jpeg")


def degraded(pixels: np.ndarray, spec: str | None) -> np.ndarray:
    """`pixels` under a degradation `KIND:S` (see the module docstring), in their own dtype."""
    if not spec:
        return pixels
    kind, _, amount = spec.partition(":")
    if kind not in DEGRADATIONS or not amount:
        raise ValueError(f"--degrade must be KIND:S with KIND one of {list(DEGRADATIONS)}, got {spec!r}")
    s = float(amount)
    if kind == "jpeg":
        import cv2

        if pixels.dtype != np.uint8:  # exported as 8 bits over its own range, as a viewer saves a JPEG
            lo, hi = float(pixels.min()), float(pixels.max())
            pixels = np.rint((pixels - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(s)])
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    f = pixels.astype(np.float64)
    h, w = f.shape
    x = np.linspace(-1.0, 1.0, w)[None, :]
    if kind == "gain":
        f = f * (1.0 + s * x)
    elif kind == "vignette":
        y = np.linspace(-1.0, 1.0, h)[:, None]
        f = f * (1.0 - s * (x * x + y * y) / 2.0)
    elif kind == "blur":
        from scipy import ndimage as ndi

        f = ndi.gaussian_filter(f, s)
    else:
        lo, hi = np.percentile(f, [0.5, 99.5])
        if kind == "ramp":
            f = f + s * (hi - lo) * x
        else:
            f = f + s * (hi - lo) * np.random.default_rng(0).standard_normal(f.shape)
    info = np.iinfo(pixels.dtype)
    return np.clip(np.rint(f), info.min, info.max).astype(pixels.dtype)


def run_pipeline(ann: Annotation, work: Path, pixel_size_um: float | None, args) -> tuple[np.ndarray, pd.DataFrame, float, str]:
    """infer.py's run on the (windowed) image; its instance map, particle table, seconds, polarity used."""
    from fracscope.cli import compose
    from fracscope.pipeline import run

    tag = "none" if pixel_size_um is None else f"{pixel_size_um:.4f}"
    src = work / f"{ann.name}_{tag}"
    src.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(ann.image[window(ann)])
    tifffile.imwrite(src / f"{ann.name}.tif", pixels)  # no resolution tags: only the override gives a size
    out = work / f"out_{ann.name}_{tag}"
    overrides = [f"input={src}", f"output={out}", "detect=learned", "progress=false", "detect_workers=0",
                 "report.write_overlays=false", "report.write_phases=false", "report.write_review=false",
                 "report.write_plots=false", "report.write_coco=false", "report.n_boot=10"]
    if args.detector:
        overrides.append(f"detect.model_path={args.detector}")
    if args.phase_model:
        overrides.append(f"phase_model_path={args.phase_model}")
    if args.model:
        overrides.append(f"model_path={args.model}")
    if pixel_size_um is not None:
        overrides.append(f"pixel_size_um={pixel_size_um:.5f}")
    overrides += list(getattr(args, "set", None) or [])
    t0 = time.perf_counter()
    run(compose("infer", *overrides))  # pore_polarity=auto, as a user's default run
    images_csv = out / "images.csv"
    found = pd.read_csv(images_csv) if images_csv.exists() and images_csv.stat().st_size else pd.DataFrame()
    if not len(found) or "pore_polarity" not in found:
        errors = out / "errors.csv"
        reason = pd.read_csv(errors)["error"].iloc[0] if errors.exists() and errors.stat().st_size else "no row"
        raise RuntimeError(f"{ann.name}: the run wrote no result: {reason}")
    polarity = f"auto: {found['pore_polarity'].iloc[0]}"
    seconds = time.perf_counter() - t0
    inst = out / "instances" / f"{ann.name}.tif"
    pred = tifffile.imread(inst) if inst.exists() else np.zeros(pixels.shape, np.uint32)
    table_file = out / "particles.csv"
    table = pd.read_csv(table_file) if table_file.exists() and table_file.stat().st_size else pd.DataFrame()
    return pred, table, seconds, polarity


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detector", default=None, help="detector .onnx (default: the shipped models/fracscope_detector.onnx)")
    ap.add_argument("--phase-model", default=None, help="phase model .onnx (default: the shipped one)")
    ap.add_argument("--model", default=None, help="crop model .onnx (default: the shipped one)")
    ap.add_argument("--images", nargs="+", default=["pt_bse", "samba_3phase", "qbi_xct"], choices=sorted(IMAGES))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--degrade", "--drift", dest="degrade", default=None, metavar="KIND:S",
                    help="an imaging degradation applied first: " + ", ".join(DEGRADATIONS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra infer.py override")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fracscope_real_"))
    print(f"detector {args.detector or 'shipped'}, phase model {args.phase_model or 'shipped'}, "
          f"crop model {args.model or 'shipped'}; IoU 0.5; work folder {work}")
    for name in args.images:
        ann = load_annotation(name)
        ann.image = degraded(ann.image, args.degrade)
        implied = implied_pixel_size_um(ann.labels)
        by_median = median_rule_pixel_size_um(ann.labels)
        counts = {c: sum(v == c for v in ann.classes.values()) for c in (*CLASS_NAMES, "unsure")}
        print(f"\n{name}: {len(ann.classes)} annotated sections {counts}; implied pixel size {implied:.4f} µm/px "
              f"(area-weighted mean whole section = {REFERENCE_DIAMETER_UM} µm; median rule: {by_median:.4f})"
              + (f"; region x{ann.region[0]}-{ann.region[2]} y{ann.region[1]}-{ann.region[3]}" if ann.region else ""))
        for label, px in (("no pixel size", None), (f"pixel_size_um={implied:.4f}", implied)):
            pred, table, seconds, polarity = run_pipeline(ann, work, px, args)
            estimate = ""
            images_csv = work / f"out_{name}_{'none' if px is None else f'{px:.4f}'}" / "images.csv"
            if px is None and images_csv.exists():
                est = pd.read_csv(images_csv).get("pixel_size_estimate_um")
                estimate = f" (estimated {float(est.iloc[0]):.4f} µm/px)" if est is not None and est.notna().any() else " (no estimate)"
            tp, n_true, n_det, fp, n_small, conf = score(ann, pred, table)
            n_pairs = int(conf.sum())
            agree = float(np.trace(conf) / n_pairs) if n_pairs else float("nan")
            false_share = fp / n_det if n_det else float("nan")
            print(f"  {label}{estimate}, pores {polarity}: recall {tp / n_true:.3f} ({tp}/{n_true}); "
                  f"false detections {false_share:.3f} ({fp}/{n_det}; {n_small} under {ann.min_diameter_px:.0f} px not scored); "
                  f"class agreement {agree:.3f} on {n_pairs} matched; {seconds:.0f} s")
            print("    confusion (rows annotated, cols predicted: " + ", ".join(CLASS_NAMES) + "): "
                  + " | ".join(" ".join(f"{v:3d}" for v in row) for row in conf))
    print("\nreproduce: OMP_NUM_THREADS=1 PYTHONPATH=src python bench/real_images.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
