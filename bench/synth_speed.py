"""Speed of the synthetic electrode generator on the paper's study size.

Reproduce: python bench/synth_speed.py --particles 2042 --workers 2
Target: 2,042 particles at ~50 nm/px in under 3 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import Counter

from fracscope.synth import generate_electrode, load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--particles", type=int, default=2042)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--preset", default="p")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config(args.preset)
    t0 = time.perf_counter()
    n_fields = n_px = 0
    classes: Counter = Counter()
    for item in generate_electrode(cfg, args.particles, args.seed, workers=args.workers):
        n_fields += 1
        n_px += item.image.pixels.size
        classes.update(p.class_name for p in item.particles)
    dt = time.perf_counter() - t0
    cpu = sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
              for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    n = sum(classes.values())
    print(f"command: python bench/synth_speed.py --particles {args.particles} --workers {args.workers} --preset {args.preset}")
    print(f"pixel size {cfg.electrode.pixel_size_um} um/px, field {list(cfg.electrode.field_px)} px")
    print(f"{n} particles in {n_fields} fields ({n_px / 1e6:.1f} Mpx) in {dt:.1f} s "
          f"-> {n / dt:.1f} particles/s, {n_fields / dt:.2f} fields/s; classes {dict(classes)}")
    print(f"CPU time {cpu:.1f} s over {args.workers} workers; load average at end {os.getloadavg()[0]:.1f} "
          f"(other jobs on the machine inflate wall time)")
    print("PASS" if dt < 180 else "FAIL", "(target < 180 s wall)")


if __name__ == "__main__":
    main()
