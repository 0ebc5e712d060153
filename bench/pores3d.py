"""Run time and peak memory of the 3-D pore analysis on a generated FIB-SEM stack.

Generates a gradient-porous particle (`fracscope.pores3d.synth`, the paper's pore classes and
its two large central pores) as a uint8 ImageJ TIFF written slice by slice, with texture,
blur, noise and whole-pixel drift between slices; then runs the full command

    python -m fracscope.pores3d input=STACK.tif output=OUT align.enabled=true

in a child process and reports its wall time and peak resident memory (the child's
``ru_maxrss``, which counts the file pages it had mapped) next to the ground truth.

Usage::

    python bench/pores3d.py                          # 500 x 1000 x 1000 voxels, a few minutes on 2 cores
    python bench/pores3d.py --shape 100 300 300      # quick check
    python bench/pores3d.py --workdir /tmp/p3 --keep # keep the stack and the outputs
    python bench/pores3d.py --figures docs/img      # also refresh the README figures
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOXEL_UM = (0.02, 0.01, 0.01)  # 20 nm slices at 10 nm/px, as in the paper's FIB-SEM series


def build_stack(path: Path, shape: tuple[int, int, int], seed: int) -> dict:
    """Write the stack and return its ground truth (pore voxel counts, particle voxels)."""
    from fracscope.io import write_volume_tiff
    from fracscope.pores3d.synth import Imaging, StackRenderer, random_phantom

    t0 = time.perf_counter()
    phantom = random_phantom(shape, VOXEL_UM, seed=seed)
    renderer = StackRenderer(phantom, Imaging(blur_px=0.8, noise_sd=0.03, outside_texture_sd=0.04,
                                              drift_px_sd=0.5), seed=seed)
    counts = np.zeros(len(phantom.pores) + 1, np.int64)
    body_voxels = 0

    def slices():
        nonlocal counts, body_voxels
        for z in range(shape[0]):
            image, body, ids = renderer.slice_with_truth(z)
            counts += np.bincount(ids.ravel(), minlength=counts.size)
            body_voxels += int(body.sum())
            yield image

    write_volume_tiff(path, slices(), shape, np.uint8, VOXEL_UM)
    return {
        "seconds": time.perf_counter() - t0,
        "pore_voxels": counts[1:],
        "body_voxels": body_voxels,
        "max_drift_px": float(np.abs(renderer.drift_px).max()),
        "drift_px": renderer.drift_px,
        "n_pores_placed": len(phantom.pores),
    }


def shrink_png(src: Path, dst: Path, width: int) -> Path:
    """A plot resized to `width` px with a 256-colour palette: small enough for the README."""
    from PIL import Image

    with Image.open(src) as im:
        rgb = im.convert("RGB")
    height = round(rgb.height * width / rgb.width)
    small = rgb.resize((width, height), Image.LANCZOS).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    small.save(dst, optimize=True)
    return dst


def truth_summary(truth: dict, min_volume_um3: float = 0.002) -> dict:
    """The numbers the analysis should find, from the generator's voxels."""
    from fracscope.pores3d.measure import size_distribution

    vv = math.prod(VOXEL_UM)
    v = truth["pore_voxels"] * vv
    kept = v >= min_volume_um3 * (1 - 1e-9)
    return {
        "n_pores": int(kept.sum()),
        "porosity_pct": 100.0 * truth["pore_voxels"][kept].sum() / truth["body_voxels"],
        "class_pct": size_distribution(v[kept], (0.002, 0.010, 0.030))["count_pct"],
        "largest_um3": sorted(v, reverse=True)[:2],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(500, 1000, 1000), metavar=("Z", "Y", "X"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the stack and outputs go (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--chunk-mb", type=float, default=256.0)
    ap.add_argument("--figures", type=Path, default=None,
                    help="also write the README figures (pores3d_*.png, < 200 KB) into this folder")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for the command")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fracscope_pores3d_"))
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    try:
        stack = work / "stack.tif"
        truth = build_stack(stack, shape, args.seed)
        gib = stack.stat().st_size / 2**30
        print(f"stack: {shape[0]} x {shape[1]} x {shape[2]} uint8 ({gib:.2f} GiB), voxel {VOXEL_UM} µm, "
              f"{truth['n_pores_placed']} pores placed, drift up to {truth['max_drift_px']:.0f} px; "
              f"written in {truth['seconds']:.1f} s")
        out = work / "out"
        cmd = [sys.executable, "-m", "fracscope.pores3d", f"input={stack}", f"output={out}", "align.enabled=true",
               f"memory.chunk_mb={args.chunk_mb}", *args.overrides]
        print("command:", " ".join(cmd))
        sys.stdout.flush()
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
        wall = time.perf_counter() - t0
        # The largest resident set of any waited-for child: here the one analysis process.
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        s = json.loads((out / "summary.json").read_text())
        t = truth_summary(truth)
        print(f"wall time: {wall:.1f} s (stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["timings_s"].items())
              + ")")
        print(f"peak RSS of the analysis process: {peak_mib:.0f} MiB")
        print(f"pores >= 0.002 µm³: found {s['n_pores']}, truth {t['n_pores']}")
        print(f"porosity: found {s['porosity_pct']:.3f} %, truth {t['porosity_pct']:.3f} %")
        print("classes 0.002-0.010 / 0.010-0.030 / >=0.030 µm³: found "
              + " / ".join(f"{p:.1f} %" for p in s["distribution"]["count_pct"])
              + ", truth " + " / ".join(f"{p:.1f} %" for p in t["class_pct"]))
        big = s["largest_pores"][:2]
        print("two largest: found " + ", ".join(f"{p['volume_um3']:.3f} µm³ at r/R {p['r_rel']:.2f}" for p in big)
              + ", truth " + ", ".join(f"{v:.3f} µm³" for v in t["largest_um3"]))
        if (out / "shifts.csv").is_file():
            found = np.loadtxt(out / "shifts.csv", delimiter=",", skiprows=1)[:, 1:]
            wrong = np.flatnonzero(np.any(np.diff(found, axis=0) != -np.diff(truth["drift_px"], axis=0), axis=1)) + 1
            where = f" (slices {wrong.tolist()})" if len(wrong) else ""
            print(f"alignment: true drift up to {truth['max_drift_px']:.0f} px; "
                  f"{len(wrong)} of {shape[0] - 1} slice-to-slice steps wrong{where}")
        labels = out / "labels.tif"
        print(f"labels.tif: {labels.stat().st_size / 2**20:.1f} MiB")
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            for name, width in (("orthoslices", 1000), ("volume_histogram", 900)):
                shrink_png(out / "plots" / f"{name}.png", args.figures / f"pores3d_{name}.png", width)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
