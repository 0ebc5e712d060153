"""Few-label calibration (issue 21): how much class agreement a lab's 25-200 labels recover on a new domain.

    python bench/few_labels.py [--seed 303] [--fields 16] [--field-px 1536 2048] [--splits 20] [--boot 500]
                               [--workdir DIR]

The stand-in "new lab" images are the shifted crack style (bench/shifted_cracks.yaml: thin many-branched cracks,
brighter voids, damage fractions 0.4 / 0.4 / 0.2). Half the fields are gp, half p, at the config's 0.05 µm/px;
seed 303 (not the training 0, held-out 9001 or tuning 555/556/101). Two labellings play the lab's labels:
- "generator": the generator's own classes (the training set's definition, on images of another style);
- "strict": a lab that draws the intact / mildly damaged line further up: a truly mildly damaged section whose
  true longest crack is shorter than the median (over the scorable mild sections) of the true longest crack /
  diameter counts as intact; broken stays broken.

1. Generates the fields, writes them as TIFFs and runs `infer.py` (defaults) once: particles.csv.
2. Matches predictions to the true sections (IoU >= 0.5); the scorable ones are matched, whole (neither cut by
   the border) and not too small, as the summary counts them.
3. For each of `--splits` random splits of the IMAGES into a label half and a score half, and each N: draws N
   labelled particles from the label half (redrawn while a class has fewer than 3, the command's minimum),
   refits the class rule (`fracscope.calibrate.fit_rule`: plain, and pulled towards the shipped rule at several
   strengths) and scores Cohen's κ against the truth on the score half; N = 0 is the shipped rule, "all" every
   scorable particle of the label half. κ's 95 % interval pools, over all splits, a bootstrap of the score half
   that resamples whole images, so it holds both the label draw and the image sample.
4. Times one full `fracscope.calibrate.run` (read the tables, fit, cross-validate, write the model file) on
   200 labels.
`--workdir` keeps the fields and the run: a second call with the same arguments reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402

from fracscope.calibrate import AUTO, MIN_LABELS_PER_CLASS, calibrated_rule, evidence  # noqa: E402
from fracscope.classify import CrackClassifier, class_rule_from_dict  # noqa: E402
from fracscope.scores import cohen_kappa, confusion_matrix  # noqa: E402
from fracscope.types import CLASS_NAMES  # noqa: E402

PRESETS = ("gp", "p")
SIZES = (25, 50, 100, 200)
# Route name -> prior strength (None: plain refit from scratch; AUTO: chosen by cross-validation on the labels,
# the command's default).
ROUTES = {"plain": None, "prior 0.1": 0.1, "prior 1": 1.0, "prior 10": 10.0, "auto (command default)": AUTO}


def make_run(work: Path, seed: int, n_fields: int, field_px: tuple[int, int]) -> tuple[pd.DataFrame, float, float]:
    """Generate the fields, run infer once and keep the scorable matched particles with their true class.

    Returns the scorable particles.csv rows (with ``truth`` and ``stem``), generation and infer seconds; cached
    in `work` (pairs.csv).
    """
    from shifted_cracks import config_overrides

    from fracscope.cli import compose
    from fracscope.detect import match_instances
    from fracscope.io import write_image_tiff
    from fracscope.pipeline import run
    from fracscope.synth import load_config
    from fracscope.synth.generate import make_field

    pairs_csv, meta_json = work / "pairs.csv", work / "run.json"
    key = {"seed": seed, "fields": n_fields, "field_px": list(field_px), "pairs": 2}
    if pairs_csv.exists() and meta_json.exists() and json.loads(meta_json.read_text())["key"] == key:
        meta = json.loads(meta_json.read_text())
        return pd.read_csv(pairs_csv, dtype={"image": str}), meta["gen_s"], meta["infer_s"]
    for stale in (work / "fields", work / "out"):  # an earlier call's fields or run must not mix in
        shutil.rmtree(stale, ignore_errors=True)
    t0 = time.perf_counter()
    truth = {}
    for preset in PRESETS:
        cfg = load_config(preset, [*config_overrides("shifted"), f"electrode.field_px=[{field_px[0]},{field_px[1]}]"])
        for i in range(n_fields // len(PRESETS)):
            item = make_field(cfg, seed, i)
            (work / "fields" / preset).mkdir(parents=True, exist_ok=True)
            path = work / "fields" / preset / f"field{i:03d}.tif"
            write_image_tiff(path, item.image.pixels, item.image.pixel_size_um)
            truth[f"{preset}__field{i:03d}"] = item
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    quiet = [f"report.write_{w}=false" for w in ("overlays", "review", "plots", "coco")]
    run(compose("infer", f"input={work / 'fields'}", f"output={work / 'out'}", *quiet, "progress=false"))
    infer_s = time.perf_counter() - t0
    table = pd.read_csv(work / "out" / "particles.csv", dtype={"image": str})
    rows = []
    for stem, item in truth.items():
        pred = tifffile.imread(work / "out" / "instances" / f"{stem}.tif")
        ann = {a.particle_id: a for a in item.particles}
        source = str(work / "fields" / f"{stem.replace('__', '/')}.tif")
        by_id = table[table["image"] == source].set_index("particle_id")
        for g, p in match_instances(item.instances, pred, iou=0.5).pairs:
            r = by_id.loc[int(p)]
            if bool(r["touches_border"]) or bool(r["too_small"]) or ann[int(g)].measurements.get("touches_border", 0):
                continue
            a = ann[int(g)]
            rows.append({**r.to_dict(), "particle_id": int(p), "stem": stem, "truth": a.class_name,
                         "true_longest_crack_frac": a.measurements["longest_crack_frac"]})
    pairs = pd.DataFrame(rows)
    pairs.to_csv(pairs_csv, index=False)
    meta_json.write_text(json.dumps({"key": key, "gen_s": gen_s, "infer_s": infer_s}))
    return pairs, gen_s, infer_s


def draw_labels(pool: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """`n` rows of `pool` at random, redrawn while a class has fewer than the command's minimum (None: never)."""
    if n > len(pool):
        return None
    for _ in range(200):
        pick = rng.choice(pool, n, replace=False)
        if np.bincount(y[pick], minlength=len(CLASS_NAMES)).min() >= MIN_LABELS_PER_CLASS:
            return pick
    return None


def image_confusions(images: np.ndarray, y: np.ndarray, pred: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """(len(scored), 9): the flattened confusion matrix of each scored image."""
    return np.stack([confusion_matrix(y[images == i], pred[images == i]).ravel() for i in scored])


def boot_kappas(cms: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """κ of the summed image confusions and `n_boot` bootstrap κ resampling whole images."""
    k = len(CLASS_NAMES)
    weights = rng.multinomial(len(cms), np.full(len(cms), 1 / len(cms)), size=n_boot)
    boots = np.array([cohen_kappa(m.reshape(k, k)) for m in weights @ cms])
    return cohen_kappa(cms.sum(0).reshape(k, k)), boots


def lab_labels(pairs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Class indices of each labelling (module docstring): the generator's, and the stricter lab's."""
    generator = np.array([CLASS_NAMES.index(c) for c in pairs["truth"]])
    longest = pairs["true_longest_crack_frac"].to_numpy()
    mild = generator == CLASS_NAMES.index("mildly_damaged")
    line = float(np.median(longest[mild]))
    strict = np.where(mild & (longest < line), CLASS_NAMES.index("intact"), generator)
    return {"generator": generator, f"strict (mild from a true longest crack of {line:.2f} diameter)": strict}


def benchmark(x: np.ndarray, y: np.ndarray, images: np.ndarray, shipped: CrackClassifier, splits: int, n_boot: int,
              rng: np.random.Generator) -> tuple[dict, dict, list[float], dict]:
    """Per (route, N): κ of each split and the pooled image-bootstrap κ; the seconds of every fit; per N the
    strengths the auto route chose."""
    stems = np.unique(images)
    kappa: dict[tuple[str, object], list[float]] = {}
    boots: dict[tuple[str, object], list[np.ndarray]] = {}
    fit_s: list[float] = []
    chosen: dict[object, list[float | None]] = {}
    for _ in range(splits):
        perm = rng.permutation(stems)
        label_imgs, score_imgs = perm[: len(perm) // 2], perm[len(perm) // 2:]
        pool = np.flatnonzero(np.isin(images, label_imgs))
        cases: list[tuple[str, object, np.ndarray]] = [("shipped", 0, shipped.predict_proba(x).argmax(1))]
        for n in [*SIZES, "all"]:
            pick = pool if n == "all" else draw_labels(pool, y, int(n), rng)
            if pick is None:
                continue
            for route, strength in ROUTES.items():
                t = time.perf_counter()
                rule, used = calibrated_rule(x[pick], y[pick], shipped, strength)
                fit_s.append(time.perf_counter() - t)
                if strength == AUTO:
                    chosen.setdefault(n, []).append(used)
                cases.append((route, n, rule.predict_proba(x).argmax(1)))
        for route, n, pred in cases:
            k, b = boot_kappas(image_confusions(images, y, pred, score_imgs), n_boot, rng)
            kappa.setdefault((route, n), []).append(k)
            boots.setdefault((route, n), []).append(b)
    return kappa, boots, fit_s, chosen


def print_table(kappa: dict, boots: dict, n_label_half: int) -> None:
    def cell(route: str, n: object) -> str:
        if (route, n) not in kappa:
            return "–"
        lo, hi = np.percentile(np.concatenate(boots[(route, n)]), [2.5, 97.5])
        return f"{np.mean(kappa[(route, n)]):.3f} [{lo:.3f}, {hi:.3f}]"

    print("| labelled particles | " + " | ".join(ROUTES) + " |\n|---|" + "---|" * len(ROUTES))
    print(f"| 0 (shipped rule) | {cell('shipped', 0)} |" + " |" * (len(ROUTES) - 1))
    for n in [*SIZES, "all"]:
        label = f"all of the label half (~{n_label_half})" if n == "all" else str(n)
        print(f"| {label} | " + " | ".join(cell(r, n) for r in ROUTES) + " |")
    sd = {r: np.mean([np.std(kappa[(r, n)]) for n in SIZES if (r, n) in kappa]) for r in ROUTES}
    print("\nsplit-to-split sd of κ (mean over N): " + ", ".join(f"{r} {v:.3f}" for r, v in sd.items()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=303, help="never 0, 9001 (held-out) or the tuning seeds 555/556")
    ap.add_argument("--fields", type=int, default=16, help="fields, half gp and half p")
    ap.add_argument("--field-px", type=int, nargs=2, default=(1536, 2048), metavar=("H", "W"))
    ap.add_argument("--splits", type=int, default=20, help="random label/score splits of the images")
    ap.add_argument("--boot", type=int, default=500, help="image bootstraps per split")
    ap.add_argument("--workdir", default="/tmp/fracscope_few_labels", help="fields and run are kept (reused) here")
    args = ap.parse_args(argv)
    if args.seed in (0, 9001, 555, 556):
        ap.error("--seed must differ from the training (0), held-out (9001) and tuning (555, 556) seeds")

    from fracscope.assets import resolve_phase_model
    from fracscope.calibrate import run as calibrate
    from fracscope.model_file import PhaseMetadata, read_metadata

    t_all = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    pairs, gen_s, infer_s = make_run(work, args.seed, args.fields, tuple(args.field_px))
    shipped = class_rule_from_dict(read_metadata(resolve_phase_model(None), PhaseMetadata).class_rule)
    assert isinstance(shipped, CrackClassifier)
    x = evidence(pairs, shipped.features)
    images = pairs["stem"].to_numpy()
    print(f"shifted crack style, seed {args.seed}: {len(np.unique(images))} fields of {args.field_px[0]} x "
          f"{args.field_px[1]} px at 0.05 µm/px (generated in {gen_s:.0f} s, infer {infer_s:.0f} s); {len(x)} "
          "scorable matched sections")
    rng = np.random.default_rng(args.seed)
    fit_s: list[float] = []
    for name, y in lab_labels(pairs).items():
        frac = np.bincount(y, minlength=3) / len(y)
        print(f"\n### labels: {name}; " + ", ".join(f"{c} {100 * f:.0f} %" for c, f in zip(CLASS_NAMES, frac)))
        print(f"\nCohen's κ against these labels on the score half (mean of {args.splits} image splits; 95 % "
              f"interval of {args.splits} x {args.boot} image bootstraps):\n")
        kappa, boots, seconds, chosen = benchmark(x, y, images, shipped, args.splits, args.boot, rng)
        fit_s += seconds
        print_table(kappa, boots, len(y) // 2)
        print("auto chose (plain / 0.1 / 1 / 10): " + "; ".join(
            f"N={n}: " + " / ".join(str(sum(c == s for c in picks)) for s in (None, 0.1, 1.0, 10.0))
            for n, picks in chosen.items()))

    # The whole command on 200 labels of one label half: tables read, fit, cross-validation, model file written.
    y = lab_labels(pairs)["generator"]
    pick = draw_labels(np.flatnonzero(np.isin(images, np.unique(images)[::2])), y, 200, rng)
    timing = "not enough scorable sections for 200 labels"
    if pick is not None:
        labels = pairs.iloc[pick][["image", "page", "particle_id"]].assign(**{"class": pairs["truth"].iloc[pick]})
        labels.to_csv(work / "labels200.csv", index=False)
        result = calibrate(work / "out" / "particles.csv", work / "labels200.csv", work / "lab_phases.onnx")
        timing = (f"{result.seconds:.1f} s (κ against the 200 labels: shipped {result.kappa_shipped:.3f}, refitted "
                  f"{result.kappa_cv:.3f} 5-fold cross-validated)")
    print(f"\nfit time per route (auto: its cross-validation included): median {1000 * np.median(fit_s):.0f} ms, "
          f"max {1000 * max(fit_s):.0f} ms; "
          f"fracscope-calibrate on 200 labels: {timing}")
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"bench wall {time.perf_counter() - t_all:.0f} s; OMP_NUM_THREADS={threads}")
    print("reproduce: python bench/few_labels.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


if __name__ == "__main__":
    main()
