"""Peak memory of tiled detection on a large memory-mapped mosaic.

Builds a synthetic SEM mosaic on disk (synthetic electrode fields from
`fracscope.synth`, tiled with flips into a uint8 ``.npy`` memmap), then runs
`detect_tiled` with the classical detector at a coarse working scale in a fresh
process, writing labels into a uint32 label memmap, and reports that process's peak
resident memory (RSS, which counts the mapped file pages it touched) and run time.

Usage::

    python bench/tiling_memory.py                  # 20,000 x 20,000 px, about 3 min on 2 cores
    python bench/tiling_memory.py --size 6000      # quick check
    python bench/tiling_memory.py --tiff           # also stream the labels to a tiled BigTIFF
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PIXEL_SIZE_UM = 0.05


def build_mosaic(path: Path, size: int, n_fields: int) -> float:
    """Write a size x size uint8 mosaic of synthetic fields to `path`; returns seconds."""
    from fracscope.synth import load_config, make_field

    t0 = time.perf_counter()
    cfg = load_config(preset="gp", overrides=[f"electrode.pixel_size_um={PIXEL_SIZE_UM}"])
    fields = [make_field(cfg, 0, i).image.pixels for i in range(n_fields)]
    fh, fw = fields[0].shape
    # The four flips of each field vary the mosaic so tiles are not all alike.
    variants = [f[:: (1, -1)[k & 1], :: (1, -1)[k >> 1]] for f in fields for k in range(4)]
    mosaic = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(size, size))
    for bi, r in enumerate(range(0, size, fh)):
        strip = np.concatenate([variants[(bi * 7 + bj) % len(variants)] for bj in range(-(-size // fw))], axis=1)
        mosaic[r : r + fh] = strip[: size - r, :size]
    mosaic.flush()
    del mosaic
    return time.perf_counter() - t0


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    VmHWM (Linux) is reset at exec; ``ru_maxrss`` would also count the parent's RSS
    at fork time.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def detect(input_path: Path, out_path: Path, tile_px: int, working_um: float, tiff: bool) -> None:
    """Child process: tiled detection from memmap to memmap; prints its peak RSS."""
    from fracscope.detect import ClassicalDetector
    from fracscope.detect.tiling import detect_tiled_report
    from fracscope.io import open_label_memmap, write_label_tiff
    from fracscope.types import SEMImage

    base_mb = peak_rss_mib()
    pixels = np.load(input_path, mmap_mode="r")
    image = SEMImage(pixels=pixels, pixel_size_um=PIXEL_SIZE_UM, pixel_size_source="synthetic", source=str(input_path))
    out = open_label_memmap(out_path, pixels.shape)
    t0 = time.perf_counter()
    res = detect_tiled_report(image, ClassicalDetector(working_pixel_size_um=working_um), tile_px=tile_px, out=out)
    t_detect = time.perf_counter() - t0
    print(f"image: {pixels.shape[0]} x {pixels.shape[1]} px uint8 memmap ({pixels.nbytes / 2**30:.2f} GiB)")
    print(f"labels memmap: {out.nbytes / 2**30:.2f} GiB")
    print(f"tiles: {res.n_tiles} of {tile_px} px; objects: {res.n_objects}; "
          f"oversized: {len(res.oversized_ids)}; conflict px: {res.conflict_px}")
    print(f"detect_tiled: {t_detect:.1f} s")
    if tiff:
        t0 = time.perf_counter()
        tif = write_label_tiff(out_path.with_suffix(".tif"), out, tile_px=512)
        print(f"write_label_tiff: {time.perf_counter() - t0:.1f} s, {tif.stat().st_size / 2**20:.1f} MiB")
    peak_mb = peak_rss_mib()
    print(f"peak RSS: {peak_mb:.0f} MiB (after imports: {base_mb:.0f} MiB)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000, help="mosaic edge in pixels")
    ap.add_argument("--tile", type=int, default=2048, help="tile edge in pixels")
    ap.add_argument("--working-um", type=float, default=0.25, help="classical detector working pixel size")
    ap.add_argument("--fields", type=int, default=2, help="distinct synthetic fields in the mosaic")
    ap.add_argument("--workdir", type=Path, default=None, help="where the memmaps go (default: a temp dir, removed)")
    ap.add_argument("--tiff", action="store_true", help="also write the labels as a tiled BigTIFF")
    ap.add_argument("--detect", nargs=2, type=Path, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.detect:
        detect(args.detect[0], args.detect[1], args.tile, args.working_um, args.tiff)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fracscope_tiling_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t_build = build_mosaic(work / "mosaic.npy", args.size, args.fields)
        print(f"mosaic built in {t_build:.1f} s")
        cmd = [sys.executable, __file__, "--detect", str(work / "mosaic.npy"), str(work / "labels.npy")]
        cmd += ["--tile", str(args.tile), "--working-um", str(args.working_um)] + (["--tiff"] if args.tiff else [])
        print("command:", " ".join(cmd))
        sys.stdout.flush()
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
