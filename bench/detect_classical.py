"""Benchmark of the classical detector: accuracy on synthetic fields, speed, real-image smoke.

Usage: ``python bench/detect_classical.py [--fields N] [--overlay DIR]``

Prints IoU-0.5 recall / precision / count ratio on `fracscope.synth` electrode fields
(gp and p presets, seeds 0-3, bright pores, the frozen held-out config), seconds per megapixel on a 2048 x 1536 field, and the
particles found on the real reference image (if present).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from fracscope.detect import ClassicalDetector, match_instances
from fracscope.io import read_image_pages

REFERENCE = Path("/work/shared/reference/samba-web/3_phase.tif")


def overlay(pixels: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Save the image with particle outlines in red."""
    from PIL import Image

    a = pixels.astype(np.float32)
    lo, hi = np.percentile(a, (0.5, 99.5))
    a = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.dstack([a, a, a])
    rgb[find_boundaries(labels, mode="inner")] = (1, 0, 0)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)


def accuracy(n_particles: int, preset: str, seed: int | None = None, overrides: tuple[str, ...] = ()) -> str:
    """Pooled IoU-0.5 scores over synth fields (GT sections below 1.5 µm dropped, as the detector does).

    `preset` "heldout" is the frozen held-out config with its own seed.
    """
    from fracscope.synth import generate_electrode, load_config

    cfg = load_config("gp", heldout=True) if preset == "heldout" else load_config(preset, overrides=list(overrides))
    seed = int(cfg.seed) if seed is None else seed
    det = ClassicalDetector()
    tp = fp = fn = 0
    for item in generate_electrode(cfg, n_particles, seed=seed):
        gt = item.instances.astype(np.int64)
        px = item.image.pixel_size_um
        small = np.bincount(gt.ravel()) < np.pi * (det.params.min_diameter_um / px / 2) ** 2
        small[0] = True
        m = match_instances(np.where(small[gt], 0, gt), det.detect(item.image))
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    n = tp + fn
    return f"gt {n} pred {tp + fp} recall {tp / n:.3f} precision {tp / (tp + fp):.3f} count ratio {(tp + fp) / n:.3f}"


def speed() -> str:
    """Seconds per megapixel on a 2048 x 1536 synth field (best of 3)."""
    from fracscope.synth import load_config, make_field

    item = make_field(load_config("gp", overrides=["electrode.field_px=[1536,2048]"]), 0, 0)
    det = ClassicalDetector()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        labels = det.detect(item.image)
        times.append(time.perf_counter() - t)
    mp = item.image.pixels.size / 1e6
    return f"{min(times):.2f} s for {mp:.2f} MP = {min(times) / mp:.2f} s/MP ({labels.max()} particles)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=110)
    parser.add_argument("--overlay", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    for preset in ("gp", "p"):
        for seed in range(4):
            print(f"synth {preset} seed {seed}:        ", accuracy(args.particles, preset, seed))
    print("synth gp seed 0, bright pores:", accuracy(args.particles, "gp", 0, ("imaging.pore_polarity=bright",)))
    print("synth held-out:               ", accuracy(args.particles, "heldout"))
    print("speed:", speed())
    if REFERENCE.exists():
        image = read_image_pages(REFERENCE, pixel_size_um=0.033)[0]
        labels = ClassicalDetector().detect(image)
        d = 2 * np.sqrt(np.bincount(labels.ravel())[1:] / np.pi)
        print(f"3_phase.tif @ 33 nm/px: {labels.max()} particles, diameters (px) {np.sort(d)[::-1].astype(int).tolist()}")
        overlay(image.pixels, labels, args.overlay / "detect_3phase_overlay.png")


if __name__ == "__main__":
    main()
