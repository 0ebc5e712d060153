"""Choose the learned detector's `min_score` on tuning fields, never the held-out ones.

    python bench/detector_min_score.py [--model models/fracscope_detector.onnx] [--seeds 555,556,557]
                                       [--particles 600] [--look infiltrated]

`min_score` drops objects whose mean foreground probability is below it. The network
fires, at ~0.93, on bright binder clumps in the matrix of some imaging conditions; real
particles score higher. The fields are those of `bench/pipeline_accuracy.py --tuning-seed`
(training synth config at 0.07 µm/px, imaging drawn per field from the training ranges).
The detector runs once per field with `min_score=0` (the 1.5 µm size rule as shipped);
every threshold is then scored on the same detections:
F1 at IoU 0.5 against all true sections, count error against the true sections of at
least 1.5 µm, unmatched predictions, and true particles lost against no threshold.
Prints one row per threshold and the one with the best F1.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from pipeline_accuracy import electrode_fields  # noqa: E402

from fracscope.detect import match_instances  # noqa: E402
from fracscope.detect.learned import LearnedDetector  # noqa: E402

THRESHOLDS = (0.0, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96)
MIN_DIAMETER_UM = 1.5


def scored_detections(detector: LearnedDetector, seeds: list[int], n_particles: int, look: str | None = None):
    """(score, matched) of every detection, and the counts of true sections (all, >= 1.5 µm); the fields
    rendered in the generator look `look` when given (the same particles)."""
    scores, matched = [], []
    n_true = n_true_judgeable = 0
    for seed in seeds:
        for _, _, item in electrode_fields(n_particles, tuning_seed=seed, look=look):
            det = detector.detect_with_scores(item.image)
            m = match_instances(item.instances, det.labels, iou=0.5)
            hit = np.zeros(int(det.labels.max()), bool)
            hit[[int(p) - 1 for _, p in m.pairs]] = True
            scores.append(det.scores)
            matched.append(hit)
            n_true += len(item.particles)
            n_true_judgeable += sum(p.measurements["eq_diameter_um"] >= MIN_DIAMETER_UM for p in item.particles)
    return np.concatenate(scores), np.concatenate(matched), n_true, n_true_judgeable


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="learned detector .onnx (default: the shipped one)")
    ap.add_argument("--seeds", default="555,556,557", help="tuning seeds (never 0 or 9001)")
    ap.add_argument("--particles", type=int, default=600, help="particles per seed")
    ap.add_argument("--look", default=None, help="render the tuning fields in this generator look (e.g. infiltrated)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if {0, 9001} & set(seeds):
        ap.error("tuning seeds must differ from the training (0) and held-out (9001) seeds")

    detector = LearnedDetector(args.model, min_score=0.0, min_diameter_um=MIN_DIAMETER_UM)
    scores, matched, n_true, n_judgeable = scored_detections(detector, seeds, args.particles, args.look)
    tp_all = int(matched.sum())
    print(f"tuning seeds {seeds}{f', look {args.look}' if args.look else ''}: {n_true} true sections ({n_judgeable} of at least {MIN_DIAMETER_UM} µm), "
          f"{len(scores)} detections at min_score 0")
    print("| min_score | F1@0.5 | count error (>= 1.5 µm) | unmatched predictions | true particles lost |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for t in THRESHOLDS:
        keep = scores >= t
        tp, fp = int((keep & matched).sum()), int((keep & ~matched).sum())
        f1 = 2 * tp / (2 * tp + fp + (n_true - tp))
        rows.append((f1, t))
        print(f"| {t:.2f} | {f1:.4f} | {100 * (int(keep.sum()) - n_judgeable) / n_judgeable:+.2f} % | {fp} | "
              f"{tp_all - tp} |")
    best = max(rows)
    print(f"best F1: min_score {best[1]} (set it with python -m fracscope.export DETECTOR.onnx "
          f"--min-score {best[1]})")
    print("reproduce: python bench/detector_min_score.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
