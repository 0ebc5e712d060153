"""Issue 20: memory of a mosaic analysed as tiles (``detect=tiled``), locally and on Dask workers.

    python bench/mosaic_memory.py [--sizes 5120 10240] [--project 20480]

For each size a square mosaic is made by repeating bench/throughput.py's 2,048 x 1,536 synthetic fields
(0.05 µm/px; particles cut where copies meet are still particles), written as one uint8 TIFF and run through
``infer.py detect=tiled`` (tiles of 2,048 px, the default 402 px overlap) twice, in fresh processes:

1. locally (``detect_workers=0``): the process's peak RSS (timings.json);
2. on a LocalCluster of 2 single-threaded workers: each worker's peak RSS. The worker that ran the file's
   task holds the whole mosaic and its maps while it assembles them; tile tasks hold one tile each.

Peak memory is then fitted as a + b x pixels over the sizes and projected to ``--project`` px square.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from throughput import make_fields  # noqa: E402


def make_mosaic(fields: Path, side: int, out: Path) -> Path:
    import tifffile

    from fracscope.io import write_image_tiff

    if out.exists():
        return out
    tiles = [tifffile.imread(f) for f in sorted(fields.glob("*.tif"))]
    h, w = tiles[0].shape
    mosaic = np.zeros((side, side), tiles[0].dtype)
    k = 0
    for r in range(0, side, h):
        for c in range(0, side, w):
            t = tiles[k % len(tiles)]
            mosaic[r:r + h, c:c + w] = t[: side - r, : side - c]
            k += 1
    write_image_tiff(out, mosaic, 0.05)
    return out


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def dask_peaks(mosaic: Path, out: Path) -> tuple[list[float], float]:
    """Per-worker peak RSS (MB) of a run on a fresh 2-worker LocalCluster, and the client's run time."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        cmd = [sys.executable, str(REPO / "infer.py"), f"input={mosaic}", f"output={out}", "detect=tiled",
               "executor=dask", f"executor.address={cluster.scheduler_address}", "progress=false"]
        subprocess.run(cmd, check=True, cwd=REPO)
        peaks = client.run(_worker_peak_mb)
    timings = json.loads((out / "timings.json").read_text())
    return sorted(peaks.values()), timings["wall_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5120, 10240])
    ap.add_argument("--project", type=int, default=20480)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "fracscope_mosaic_memory"))
    args = ap.parse_args()
    work = Path(args.workdir)
    make_fields(work / "fields", 700)
    rows = []
    for side in args.sizes:
        mosaic = make_mosaic(work / "fields", side, work / f"mosaic_{side}.tif")
        out = work / f"local_{side}"
        subprocess.run([sys.executable, str(REPO / "infer.py"), f"input={mosaic}", f"output={out}", "detect=tiled",
                        "detect_workers=0", "progress=false"], check=True, cwd=REPO)
        local = json.loads((out / "timings.json").read_text())
        workers, dask_wall = dask_peaks(mosaic, work / f"dask_{side}")
        rows.append((side, local["peak_rss_mb"], local["wall_s"], local["n_particles"], workers, dask_wall))
        print(f"{side} x {side} px ({local['n_particles']} particles): local peak {local['peak_rss_mb']:.0f} MB "
              f"in {local['wall_s']:.0f} s; dask workers' peaks {', '.join(f'{p:.0f}' for p in workers)} MB "
              f"in {dask_wall:.0f} s", flush=True)
    px = np.array([r[0] ** 2 for r in rows], float)
    for name, values in (("local process", [r[1] for r in rows]),
                         ("dask worker that assembles the mosaic", [r[4][-1] for r in rows]),
                         ("dask worker that ran only tiles", [r[4][0] for r in rows])):
        b, a = np.polyfit(px, np.array(values), 1) if len(rows) > 1 else (0.0, values[0])
        print(f"{name}: {a:.0f} MB + {b * 1e6:.1f} MB per Mpx -> {a + b * args.project ** 2:.0f} MB at "
              f"{args.project} x {args.project} px")
    print("reproduce: python bench/mosaic_memory.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
