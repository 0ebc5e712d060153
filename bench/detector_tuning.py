"""Tune the learned detector's post-processing thresholds on tuning fields, never the held-out ones.

Usage: ``python bench/detector_tuning.py --model detector.onnx [--fields 3] [--seed 555]``

The network runs once per field; `labels_from_maps` then runs for every pair of
foreground and seed thresholds on a grid. Fields come from the *training* synth config
(``conf/synth/config.yaml``, both presets, 0.07 µm/px like the held-out set) with a seed
that neither training (seed 0) nor the held-out set (9001) uses, so choosing thresholds
here does not peek at `bench/detection.py`'s numbers. Scores as in `bench/detection.py`
(F1 at IoU 0.5 over all predictions, count bias, merge and split rates). Prints one row
per setting, best F1 first, and the overrides that apply the best one:
``detect=learned detect.foreground_threshold=… detect.seed_threshold=…``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from detection import evaluate_image

from fracscope.detect.learned import LearnedDetector, resize_nearest
from fracscope.detect.postprocess import labels_from_maps

FOREGROUND = (0.4, 0.5, 0.6)
SEED = (0.3, 0.4, 0.5, 0.6, 0.7)


def tuning_fields(preset: str, n: int, seed: int) -> list:
    from fracscope.synth import load_config, make_field

    cfg = load_config(preset, ["electrode.pixel_size_um=0.07", "electrode.field_px=[768,1024]"], heldout=False)
    return [make_field(cfg, seed, i) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="learned detector .onnx")
    parser.add_argument("--fields", type=int, default=3, help="tuning fields per preset")
    parser.add_argument("--seed", type=int, default=555, help="synth seed of the tuning fields")
    args = parser.parse_args(argv)

    detector = LearnedDetector(args.model, refine_boundary=False)
    base = detector.params
    maps = []
    for preset in ("gp", "p"):
        for item in tuning_fields(preset, args.fields, args.seed):
            fg, dist, _ = detector.predict_maps(np.asarray(item.image.pixels), float(item.image.pixel_size_um))
            maps.append((item, fg, dist))
    print(f"{len(maps)} fields; the model's own thresholds: foreground {base.foreground_threshold}, "
          f"seed {base.seed_threshold}", flush=True)

    rows = []
    for fg_t in FOREGROUND:
        for seed_t in SEED:
            params = dataclasses.replace(base, foreground_threshold=fg_t, seed_threshold=seed_t)
            tp = n_pred = n_gt = merged = split = n_broken = 0
            for item, fg, dist in maps:
                small = labels_from_maps(fg, dist, params=params)
                labels = resize_nearest(small, np.shape(item.image.pixels)).astype(np.uint32)
                n = int(labels.max())
                ev = evaluate_image(item, labels, np.ones(n, np.float32))
                tp += int(ev.tp50.sum())
                n_pred += ev.n_pred
                n_gt += ev.n_gt
                merged += ev.merged
                split += ev.split_broken
                n_broken += ev.n_broken
            f1 = 2 * tp / max(n_pred + n_gt, 1)
            rows.append((f1, fg_t, seed_t, 100 * (n_pred - n_gt) / n_gt, 100 * merged / n_gt,
                         100 * split / max(n_broken, 1)))
    rows.sort(reverse=True)
    print("| F1@0.5 | foreground | seed | count bias % | merge % | split % (broken) |")
    print("|---|---|---|---|---|---|")
    for f1, fg_t, seed_t, bias, merge, split in rows:
        print(f"| {f1:.3f} | {fg_t} | {seed_t} | {bias:+.1f} | {merge:.1f} | {split:.1f} |")
    best = rows[0]
    print(f"best: detect=learned detect.foreground_threshold={best[1]} detect.seed_threshold={best[2]}")
    print(f"reproduce: python bench/detector_tuning.py --model {args.model} --fields {args.fields} --seed {args.seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
