"""Compare a synthetic wide field with the real reference 3_phase.tif (~33 nm/px).

Reproduce: python bench/realism.py [--preset p] [--seed 1] [--n-seeds 8]
Prints a table: particle/matrix grey levels (percentiles of the full scale), noise SD
(robust, from the Laplacian inside particles), grain-boundary spacing (mean run length
between dark-line crossings inside particles), curtaining (share of column-mean power
at periods < 1 µm), and whether Otsu + distance-transform watershed finds the large
particles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from fracscope.synth import generate_electrode, load_config

REFERENCE = Path("/work/shared/reference/samba-web/3_phase.tif")
PX_UM = 0.033


def _norm(px: np.ndarray) -> np.ndarray:
    return px.astype(np.float64) / np.iinfo(px.dtype).max


def stats(img: np.ndarray) -> dict[str, float]:
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    t = threshold_otsu(img)
    part = ndi.binary_opening(img > t, iterations=2)
    part = ndi.binary_fill_holes(part)
    core = ndi.binary_erosion(part, iterations=5)
    mat = ndi.binary_erosion(~part, iterations=3)
    out = {}
    for name, m in (("particle", core), ("matrix", mat)):
        p5, p50, p95 = np.percentile(img[m], [5, 50, 95])
        out[f"{name}_p5"], out[f"{name}_p50"], out[f"{name}_p95"] = p5, p50, p95
    # Noise: MAD of the discrete Laplacian / sqrt(20) (white-noise gain of the 4-neighbour Laplacian).
    lap = ndi.laplace(img)
    out["noise_sd"] = 1.4826 * np.median(np.abs(lap[core] - np.median(lap[core]))) / np.sqrt(20)
    # Grain-boundary spacing: along rows, distance between local dark dips inside particles.
    sm = ndi.gaussian_filter(img, 1.0)
    dip = (sm < ndi.gaussian_filter(img, 6.0) - 0.03) & core
    runs = []
    for r in range(0, img.shape[0], 8):
        idx = np.flatnonzero(np.diff(dip[r].astype(np.int8)) == 1)
        if idx.size > 1:
            runs.extend(np.diff(idx))
    out["gb_spacing_um"] = float(np.median(runs)) * PX_UM if runs else float("nan")
    # Curtaining: column-mean spectrum inside particle rows; power at periods < 1 µm.
    col = np.array([img[core[:, j], j].mean() if core[:, j].sum() > 20 else np.nan for j in range(img.shape[1])])
    col = np.interp(np.arange(col.size), np.flatnonzero(~np.isnan(col)), col[~np.isnan(col)])
    col = col - ndi.uniform_filter1d(col, int(3.0 / PX_UM))
    spec = np.abs(np.fft.rfft(col)) ** 2
    f = np.fft.rfftfreq(col.size, d=PX_UM)
    out["curtain_sd"] = float(col.std())
    out["curtain_hf_share"] = float(spec[f > 1.0].sum() / max(spec[1:].sum(), 1e-12))
    # Otsu + distance-transform watershed: large particles found (equivalent diameter > 6 µm).
    dist = ndi.distance_transform_edt(part)
    peaks = (dist == ndi.maximum_filter(dist, size=int(4.0 / PX_UM))) & (dist > 2.0 / PX_UM)
    markers, _ = ndi.label(peaks)
    lab = watershed(-dist, markers, mask=part)
    areas = np.bincount(lab.ravel())[1:] * PX_UM**2
    out["n_large_found"] = int(np.count_nonzero(2 * np.sqrt(areas / np.pi) > 6.0))
    out["particle_area_frac"] = float(part.mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="p")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n-seeds", type=int, default=1, help="average over seeds seed..seed+n-1 (imaging jitter is per field)")
    args = ap.parse_args()
    import tifffile

    ref = _norm(tifffile.imread(REFERENCE))
    cfg = load_config(args.preset, [f"electrode.pixel_size_um={PX_UM}", "electrode.field_px=[754,1012]"])
    a = stats(ref)
    runs, truth_large = [], []
    for seed in range(args.seed, args.seed + args.n_seeds):
        field = next(generate_electrode(cfg, 1, seed))
        runs.append(stats(_norm(field.image.pixels)))
        truth_large.append(sum(1 for p in field.particles if p.measurements["eq_diameter_um"] > 6.0))
    seeds = f"seed {args.seed}" if args.n_seeds == 1 else f"mean ± sd, seeds {args.seed}-{args.seed + args.n_seeds - 1}"
    print(f"command: python bench/realism.py --preset {args.preset} --seed {args.seed} --n-seeds {args.n_seeds}")
    print(f"| metric | real 3_phase.tif | synthetic ({args.preset}, {seeds}) |")
    print("| --- | --- | --- |")
    for k in a:
        v = np.array([r[k] for r in runs], dtype=float)
        sd = f" ± {v.std():.2g}" if v.size > 1 else ""
        print(f"| {k} | {a[k]:.4g} | {v.mean():.4g}{sd} |")
    print(f"| large particles in ground truth | (by eye ~6) | {np.mean(truth_large):.3g} |")


if __name__ == "__main__":
    main()
