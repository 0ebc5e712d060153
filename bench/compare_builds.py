"""Whole-pipeline speed of several builds side by side: `infer.py` in a fresh process per run, interleaved.

    git worktree add /tmp/old <commit>
    python bench/compare_builds.py --rounds 2 old=/tmp/old new=.

Each build is a source tree (its own src/, conf/ and models/); every round runs each build once on the same
fields (bench/throughput.py's: 2048 x 1536 px gp fields at 0.05 µm/px, ~2,042 particles, generated once into
--fields) with `infer.py`'s defaults, and prints the onnxruntime fp32 MatMul peak measured just before (the
machine's speed drifts 2-3x by day: compare builds within one sitting only), the wall time, particles/s, and
from the run's own timings.json its stage times and peak memory (the infer process plus its largest detect
worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import make_fields, matmul_peak_gflops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("builds", nargs="+", metavar="NAME=TREE", help="a name and a source tree, e.g. old=/tmp/old")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--particles", type=int, default=2042)
    ap.add_argument("--fields", type=Path, default=Path(tempfile.gettempdir()) / "fracscope_compare_builds")
    ap.add_argument("--python", default=sys.executable, help="interpreter with fracscope's dependencies")
    args = ap.parse_args()
    builds = dict(b.split("=", 1) for b in args.builds)
    fields = args.fields / "fields"
    make_fields(fields, args.particles)
    for r in range(args.rounds):
        for name, tree in builds.items():
            peak = matmul_peak_gflops()
            out = args.fields / "out" / name
            shutil.rmtree(out, ignore_errors=True)
            env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve() / "src"), NO_ALBUMENTATIONS_UPDATE="1")
            t = time.perf_counter()
            proc = subprocess.run([args.python, "infer.py", f"input={fields}", f"output={out}", "progress=false"],
                                  cwd=tree, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode:
                print(f"round {r + 1} {name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
                continue
            timings = json.loads((out / "timings.json").read_text())
            rss_mb = timings["peak_rss_mb"] + timings.get("peak_rss_children_mb", 0.0)
            n = timings["n_particles"]
            stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.get("stage_s", {}).items())
            print(f"round {r + 1} {name}: MatMul {peak:.0f} GFLOP/s, wall {wall:.1f} s, {n} particles, {n / wall:.1f} "
                  f"particles/s, stages (s) {stages}, peak RSS at most {rss_mb:.0f} MB", flush=True)
    print("reproduce: python bench/compare_builds.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
