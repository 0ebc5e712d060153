"""Seconds per image of the dense phase model (`fracscope.phase_map.PhaseMapModel.predict`).

    python bench/phase_map_speed.py [--model phases.onnx] [--int8] [--size 2048x1536] [--pixel-size 0.06]
                                    [--threads 1,2] [--repeats 2]

Without --model a `PhaseNet` of the default `PhaseNetConfig` with random weights is exported to a temp
folder (speed does not depend on weight values); --int8 adds its static int8 export, calibrated on
normalised tiles of the test image (enough for timing, not for accuracy). The image is a synthetic-looking
field of discs. Each timing is the best of --repeats calls of `predict` (resampling, normalisation, tiles,
resampling back) per onnxruntime thread count. The machine's speed drifts, so the onnxruntime fp32 MatMul
peak (bench/throughput.py) is printed beside the numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from throughput import matmul_peak_gflops


def disc_field(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Bright discs with dark pores on a dark matrix, with noise (float32)."""
    rng = np.random.default_rng(seed)
    img = np.full((rows, cols), 40.0, np.float32)
    yy, xx = np.ogrid[:rows, :cols]
    for _ in range(rows * cols // 60_000):
        cy, cx, r = rng.uniform(0, rows), rng.uniform(0, cols), rng.uniform(40, 140)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 180
        py, px = cy + rng.uniform(-0.5, 0.5) * r, cx + rng.uniform(-0.5, 0.5) * r
        img[(yy - py) ** 2 + (xx - px) ** 2 < (0.1 * r) ** 2] = 20
    return img + rng.normal(0, 10, img.shape).astype(np.float32)


def export_random(folder: Path, int8: bool, calibration: np.ndarray) -> list[tuple[str, Path]]:
    import torch

    from fracscope.export import export_phases
    from fracscope.model_file import PhaseMetadata
    from fracscope.models.phase_net import PhaseNet, PhaseNetConfig

    torch.manual_seed(0)
    net = PhaseNet(PhaseNetConfig()).eval()
    meta = PhaseMetadata(encoder=PhaseNetConfig.encoder, training_data="random weights (speed only)")
    models = [("fp32", export_phases(net, folder / "fp32.onnx", meta).path)]
    if int8:
        report = export_phases(net, folder / "int8.onnx", meta, quantize=True, calibration=calibration,
                               min_phase_agreement_pct=0.0)  # random weights: only the speed is of interest
        models.append(("int8", report.path))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--size", default="2048x1536", help="image columns x rows")
    parser.add_argument("--pixel-size", type=float, default=0.06)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from fracscope.detect.learned import normalise_image
    from fracscope.phase_map import PhaseMapModel

    cols, rows = (int(v) for v in args.size.split("x"))
    img = disc_field(rows, cols)
    print(f"onnxruntime fp32 MatMul peak: {matmul_peak_gflops():.1f} GFLOP/s (1024^3, all threads)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            work = normalise_image(img)
            cal = np.stack([work[r : r + 256, c : c + 256] for r in (0, 512) for c in (0, 512, 1024, 1536)])
            models = export_random(Path(tmp), args.int8, cal[:, None].astype(np.float32))
        else:
            models = [("given", args.model)]
        for name, path in models:
            for threads in (int(t) for t in args.threads.split(",")):
                model = PhaseMapModel(path, threads=threads)
                best = np.inf
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    probs = model.predict(img, args.pixel_size)
                    best = min(best, time.perf_counter() - t0)
                print(f"{name}: {cols}x{rows} px at {args.pixel_size} um/px, tile {model.tile_px}/"
                      f"{model.overlap_px}, {threads} thread(s): {best:.2f} s  (output {probs.shape})", flush=True)


if __name__ == "__main__":
    main()
