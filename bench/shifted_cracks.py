"""Class fractions on electrode fields drawn with the SHIFTED crack style (bench/shifted_cracks.yaml).

    python bench/shifted_cracks.py [--particles 300] [--seed 101] [--configs shifted,unshifted]
                                   [--set classify=topology --set model_path=... ...] [--quick]

Per preset (gp, p) and per config, generates electrode fields with `fracscope.synth.generate_electrode`
(`shifted`: conf/synth/config.yaml + bench/shifted_cracks.yaml; `unshifted`: the same seed and config without the
crack overrides but with the shifted file's damage fractions, so the two differ only in how cracks look; both use
the config's fixed imaging, not the per-image draws of the training set), runs
detection + analysis through `crack_visibility.analyse_field` (the one call into the pipeline) and matches
predictions to the true sections at IoU >= 0.5. On matched sections that are whole and large enough to judge
(neither the truth nor the prediction cut by the border, the prediction not too_small: the ones the summary
counts) it prints the true and predicted class fractions, the per-class recall and the macro-F1; and the
detection recall over all true sections. The seed is a tuning seed (never 0 or the held-out 9001).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fracscope.synth import generate_electrode, load_config  # noqa: E402
from fracscope.types import CLASS_NAMES  # noqa: E402

SHIFTED = Path(__file__).resolve().parent / "shifted_cracks.yaml"
PRESETS = ("gp", "p")


def config_overrides(name: str) -> list[str]:
    """The synth overrides of a config: `shifted` is the committed file; `unshifted` keeps only its damage fractions."""
    shifted = [str(o) for o in OmegaConf.load(SHIFTED)]
    if name == "shifted":
        return shifted
    if name == "unshifted":
        return [o for o in shifted if o.startswith("damage=")]
    raise ValueError(f"unknown config {name!r}: shifted or unshifted")


def score(name: str, preset: str, n_particles: int, seed: int, run, field_px: tuple[int, int]) -> dict:
    """Counts of one config and preset: true and predicted classes of judged matched sections, detection."""
    from crack_visibility import analyse_field

    from fracscope.detect import match_instances

    # Wider fields than the config's 768 x 1024: fewer sections cut by the border, more judged per section drawn.
    cfg = load_config(preset, [*config_overrides(name), f"electrode.field_px=[{field_px[0]},{field_px[1]}]"])
    true, pred, n_true, n_matched = [], [], 0, 0
    for item in generate_electrode(cfg, n_particles, seed=seed, workers=1):
        instances, predictions = analyse_field(item.image, run)
        m = match_instances(item.instances, instances, iou=0.5)
        ann = {a.particle_id: a for a in item.particles}
        n_true += len(item.particles)
        n_matched += m.tp
        for g, p in m.pairs:
            a = ann[g]
            if p in predictions and predictions[p].judged and not a.measurements.get("touches_border", 0):
                true.append(CLASS_NAMES.index(a.class_name))
                pred.append(CLASS_NAMES.index(predictions[p].class_name))
    return {"true": np.array(true, int), "pred": np.array(pred, int), "n_true": n_true, "n_matched": n_matched}


def report(name: str, preset: str, counts: dict) -> list[str]:
    """One markdown row: judged count, true vs predicted fractions, recalls, macro-F1, detection recall."""
    from fracscope.scores import ClassScores

    true, pred = counts["true"], counts["pred"]
    n = max(len(true), 1)
    t_frac, p_frac = np.bincount(true, minlength=3) / n, np.bincount(pred, minlength=3) / n
    scores = ClassScores.from_labels(true, pred)
    fractions = [f"{100 * t:.1f} / {100 * p:.1f}" for t, p in zip(t_frac, p_frac)]
    recalls = [f"{r:.2f}" for r in scores.recall]
    detection = f"{100 * counts['n_matched'] / max(counts['n_true'], 1):.1f} % ({counts['n_matched']}/{counts['n_true']})"
    return [name, preset, str(len(true)), *fractions, *recalls, f"{scores.macro_f1:.3f}", detection]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--particles", type=int, default=200, help="true sections per preset and config (at least)")
    ap.add_argument("--seed", type=int, default=101, help="a tuning seed: never 0 (training) or 9001 (held-out)")
    ap.add_argument("--configs", default="shifted,unshifted", help="comma-separated: shifted, unshifted")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="infer override (compose)")
    ap.add_argument("--field-px", type=int, nargs=2, default=(1536, 2048), metavar=("H", "W"), help="field size")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30 sections per preset, shifted only")
    args = ap.parse_args(argv)
    if args.seed in (0, 9001):
        ap.error("--seed must differ from the training (0) and held-out (9001) seeds")
    names = ["shifted"] if args.quick else [c.strip() for c in args.configs.split(",") if c.strip()]
    n_particles = 30 if args.quick else args.particles

    from crack_visibility import build_pipeline
    from throughput import matmul_peak_gflops

    t0, cpu0 = time.perf_counter(), time.process_time()
    run = build_pipeline(args.set)
    rows = [report(name, preset, score(name, preset, n_particles, args.seed, run, tuple(args.field_px)))
            for name in names for preset in PRESETS]
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"shifted crack style ({SHIFTED.name}: {' '.join(config_overrides('shifted'))}); seed {args.seed}, "
          f"at least {n_particles} sections per preset and config, "
          f"{args.field_px[0]} x {args.field_px[1]} px fields at the config's 0.05 µm/px")
    print(f"pipeline: {' '.join(args.set) or 'infer defaults'}\n")
    head = ["config", "preset", "judged"] + [f"{c} true / pred %" for c in CLASS_NAMES] \
        + [f"recall {c}" for c in CLASS_NAMES] + ["macro-F1", "detection recall"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nwall {wall:.0f} s (CPU {cpu:.0f} s); onnxruntime fp32 MatMul peak {matmul_peak_gflops():.0f} GFLOP/s; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("reproduce: python bench/shifted_cracks.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


if __name__ == "__main__":
    main()
