"""Scale estimation (issue 21): the pixel size of an untagged image, estimated from the image.

Usage: ``python bench/scale_estimation.py [--seeds 201,202,203] [--pixel-sizes 0.01,0.02,...]
[--packed-field-um 80] [--real] [--json out.json]``

Synthetic part: one generated electrode field (preset gp, `conf/synth/config.yaml` imaging) per seed
and pixel size, 80 µm a side clipped to 512-2400 px (at 0.01 µm/px a 24 µm field: 1-3 particles,
most cut by the border). Every field is a window of an 80 µm packing (`electrode.packed_field_um`,
`--packed-field-um`; since session 16): at 0.035-0.2 µm/px the field is the packing itself (80 µm or
more), at 0.01 and 0.02 the central 24 / 48 µm of it, so every pixel size sees one particle
population, as a microscope zooming in on a large electrode does. ``--packed-field-um 0`` is the
session 15 design, each field packed alone, where a small field gets smaller sections (the
generator's small-field bias, conf/synth/config.yaml) and the 0.01 row measured it too.
The seeds 101-103 tuned `fracscope.detect.scale.REFERENCE_DIAMETER_UM`;
the default seeds 201-203 were not looked at before. Per pixel size:

* **median err %**: median over fields of (estimate / true - 1), and the largest |err|;
* **F1 est / F1 true**: detection F1 at IoU 0.5 of the shipped learned detector, pooled over the
  fields, when it runs at the estimate vs. at the true pixel size (GT sections under 1.5 µm are
  ignored, as in bench/detection.py);
* **granulometry err %**: the cheaper alternative that was measured and not shipped: Otsu
  foreground of a ~512 px copy, mean distance to the matrix over it (a disk of diameter D has a
  mean of D/6), mapped to µm by a constant fitted on the tuning seeds (`GRANULOMETRY_K`);
* **s/estimate**: seconds per estimate on this machine (one onnxruntime thread);
* **true D µm**: per field, the mean true section diameter (from the generator's sphere size and cut
  height) weighted by visible area: what an estimator that read every section exactly would see
  (the estimator's prior is `REFERENCE_DIAMETER_UM`).

``--real``: the estimate on three real images of known approximate pixel size, and how many
particles the detector finds at the estimate vs. at the known value.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from detection import evaluate_image  # noqa: E402

from fracscope.detect.learned import LearnedDetector  # noqa: E402
from fracscope.detect.scale import estimate_pixel_size_um  # noqa: E402
from fracscope.synth import load_config  # noqa: E402
from fracscope.synth.generate import make_field  # noqa: E402
from fracscope.types import AnnotatedImage, SEMImage  # noqa: E402

FIELD_UM = 80.0
PACKED_UM = 80.0  # every field is a window of a packing this large (0: each field packed alone, before session 16)
FIELD_PX = (512, 2400)
PIXEL_SIZES = (0.01, 0.02, 0.035, 0.05, 0.08, 0.12, 0.2)
# µm: true pixel size x mean distance-to-matrix (px) over the foreground, median over tuning seeds 101-103.
GRANULOMETRY_K = 1.13
REAL = (
    ("/work/shared/real/qbi_nmc90_xct_slice.png", 0.2),
    ("/work/shared/real/bil_nmc811_pt_infiltrated_bse.png", 0.1),
    ("/work/shared/reference/samba-web/3_phase.tif", 0.033),
)


def field(pixel_size_um: float, seed: int, packed_field_um: float = PACKED_UM) -> AnnotatedImage:
    side = int(np.clip(round(FIELD_UM / pixel_size_um), *FIELD_PX))
    cfg = load_config("gp", [f"electrode.pixel_size_um={pixel_size_um}", f"electrode.field_px=[{side},{side}]",
                             f"electrode.packed_field_um={packed_field_um}"])
    return make_field(cfg, seed, 0)


def true_section_diameter_um(item: AnnotatedImage) -> float:
    """Visible-area-weighted mean of the generator's section diameters (sphere size, cut height)."""
    m = [p.measurements for p in item.particles]
    area = np.array([v["area_um2"] for v in m])
    d = 2 * np.sqrt(np.maximum([0.25 * v["sphere_diameter_um"] ** 2 - v["section_offset_um"] ** 2 for v in m], 0))
    return float((area * d).sum() / area.sum())


def granulometry_mean_distance_px(pixels: np.ndarray) -> float:
    """Mean distance to the matrix over the Otsu foreground, in image pixels (from a ~512 px copy)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from fracscope.detect.learned import to_working_scale

    scale = min(1.0, 512 / max(pixels.shape))
    small = ndi.gaussian_filter(to_working_scale(pixels, scale), 1.0)
    fg = small > threshold_otsu(small)
    dist = ndi.distance_transform_edt(fg)
    return float(dist[fg].mean() / scale) if fg.any() else float("nan")


def f1(evals: list) -> float:
    tp = sum(int(e.tp50.sum()) for e in evals)
    n = sum(e.n_gt + e.n_pred for e in evals)
    return 2 * tp / n if n else 1.0


def synthetic(det: LearnedDetector, seeds: list[int], pixel_sizes: list[float], packed_field_um: float) -> list[dict]:
    rows = []
    for px in pixel_sizes:
        errs, gran, secs, at_est, at_true, k, true_d = [], [], [], [], [], [], []
        for seed in seeds:
            item = field(px, seed, packed_field_um)
            true_d.append(round(true_section_diameter_um(item), 2))
            t = time.perf_counter()
            est = estimate_pixel_size_um(item.image.pixels, det)
            secs.append(time.perf_counter() - t)
            errs.append(est.pixel_size_um / px - 1)
            for use, out in ((est.pixel_size_um, at_est), (px, at_true)):
                found = det.detect_with_scores(SEMImage(item.image.pixels, use))
                out.append(evaluate_image(item, found.labels, found.scores))
            mean_d = granulometry_mean_distance_px(item.image.pixels)
            k.append(px * mean_d)
            gran.append(GRANULOMETRY_K / mean_d / px - 1)
        rows.append(dict(pixel_size_um=px, median_err=float(np.median(errs)), max_abs_err=float(np.max(np.abs(errs))),
                         errs=[round(e, 3) for e in errs], f1_est=f1(at_est), f1_true=f1(at_true),
                         n_gt=sum(e.n_gt for e in at_true), granulometry_median_err=float(np.median(gran)),
                         granulometry_k=k, seconds=float(np.mean(secs)), true_section_d_um=true_d,
                         packed_field_um=packed_field_um))
        r = rows[-1]
        print(f"{px:6.3f} | {100 * r['median_err']:+6.1f} | {100 * r['max_abs_err']:5.1f} | {r['f1_est']:.3f} | "
              f"{r['f1_true']:.3f} | {r['n_gt']:4d} | {100 * r['granulometry_median_err']:+7.1f} | {r['seconds']:.1f} | "
              f"{' '.join(f'{100 * e:+.1f}' for e in errs)} | {' '.join(f'{d:.2f}' for d in true_d)}", flush=True)
    return rows


def real(det: LearnedDetector) -> list[dict]:
    from fracscope.io import iter_images

    rows = []
    for path, known in REAL:
        if not Path(path).is_file():
            print(f"{path}: missing, skipped")
            continue
        image = next(iter(iter_images(path)))
        est = estimate_pixel_size_um(image.pixels, det)
        n_est = int(det.detect(SEMImage(image.pixels, est.pixel_size_um)).max())
        n_known = int(det.detect(SEMImage(image.pixels, known)).max())
        n_old = int(det.detect(SEMImage(image.pixels, 0.05)).max())
        rows.append(dict(image=Path(path).name, shape=list(image.pixels.shape), known_um=known,
                         estimate_um=est.pixel_size_um, score=est.score, n_at_estimate=n_est, n_at_known=n_known,
                         n_at_old_fallback=n_old))
        print(f"{Path(path).name}: {image.pixels.shape} known ~{known} | estimate {est.pixel_size_um:.4f} "
              f"({100 * (est.pixel_size_um / known - 1):+.0f} %, score {est.score:.2f}) | particles at estimate "
              f"{n_est}, at known {n_known}, at the old 0.05 fallback {n_old}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="201,202,203")
    ap.add_argument("--pixel-sizes", default=",".join(map(str, PIXEL_SIZES)))
    ap.add_argument("--packed-field-um", type=float, default=PACKED_UM,
                    help="fields are central windows of a packing this large (0: each field packed alone, the "
                         "session 15 design)")
    ap.add_argument("--real", action="store_true", help="also the real images")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    det = LearnedDetector(threads=1)
    print("command: python bench/scale_estimation.py " + " ".join(sys.argv[1:] if argv is None else argv))
    out: dict = {}
    if not args.no_synthetic:
        seeds = [int(s) for s in args.seeds.split(",")]
        packed = (f"each field the central window of a {args.packed_field_um:g} µm packing" if args.packed_field_um
                  else "each field packed alone (small fields get smaller sections)")
        print(f"seeds {seeds}, preset gp, field {FIELD_UM:g} µm clipped to {FIELD_PX} px, {packed}")
        print("px um  | med err % | max|err| % | F1 est | F1 true | n GT | granul. err % | s/estimate | err % per field "
              "| true D µm per field")
        out["synthetic"] = synthetic(det, seeds, [float(v) for v in args.pixel_sizes.split(",")], args.packed_field_um)
    if args.real:
        out["real"] = real(det)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
