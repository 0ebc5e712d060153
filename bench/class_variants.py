"""Class macro-F1 of model variants on the crops the pipeline fed to the model: test-time flips, ensembles.

    python bench/pipeline_accuracy.py --detector learned --tuning-seed 555 --save-crops crops_555.npz   # once per seed
    python bench/class_variants.py crops_555.npz crops_556.npz crops_557.npz \\
        [--model models/fracscope_default.onnx --model other.onnx] [--selective 0.6 0.7 0.8]

Each file holds the judged sections of one `bench/pipeline_accuracy.py` run (the same ~700 sections its
macro-F1 is computed on) with their true classes, so a class-head variant is scored in seconds per seed instead
of a whole pipeline run. Variants, each against the first model's plain argmax:
- every model alone, with a horizontal flip averaged in, and with three flips/rotations averaged in;
- all models averaged (an ensemble);
- the first model with the flip averaged in only where its top probability is under a threshold (`--selective`).
"Fixed" and "broke" count sections the variant gets right that the first model got wrong, and the reverse:
a variant whose gain is not more fixed than broke sections is noise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from fracscope.scores import ClassScores  # noqa: E402

TRANSFORMS = {
    "flip_h": lambda x: x[..., ::-1],
    "flip_v": lambda x: x[..., ::-1, :],
    "rot90": lambda x: np.rot90(x, 1, axes=(2, 3)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("crops", nargs="+", help="files written by bench/pipeline_accuracy.py --save-crops")
    ap.add_argument("--model", action="append", default=None, help="model file (repeat; default: the shipped model)")
    ap.add_argument("--selective", type=float, nargs="*", default=[0.6, 0.7, 0.8],
                    help="top-probability thresholds under which the first model averages in the flip")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from fracscope.assets import DEFAULT_MODEL
    from fracscope.runtime import load_backend

    models = args.model or [str(DEFAULT_MODEL)]
    sets = [np.load(p) for p in args.crops]
    truth = [s["true_class"] for s in sets]
    # probs[model][transform][file] = (N, 3)
    probs: dict[str, dict[str, list[np.ndarray]]] = {}
    for m in models:
        backend = load_backend(m)
        probs[m] = {}
        for name, tf in {"plain": lambda x: x, **TRANSFORMS}.items():
            probs[m][name] = [
                backend.predict_batched(np.ascontiguousarray(tf(s["crops"].astype(np.float32))), args.batch_size)[0]
                for s in sets
            ]

    first = models[0]
    base = [p.argmax(1) for p in probs[first]["plain"]]

    def report(label: str, preds: list[np.ndarray], share: float | None = None) -> None:
        scores = [ClassScores.from_labels(t, p).macro_f1 for t, p in zip(truth, preds)]
        fixed = sum(int(np.sum((b != t) & (p == t))) for t, b, p in zip(truth, base, preds))
        broke = sum(int(np.sum((b == t) & (p != t))) for t, b, p in zip(truth, base, preds))
        extra = f"; extra model passes on {100 * share:.0f} % of crops" if share is not None else ""
        print(f"| {label} | {' / '.join(f'{s:.3f}' for s in scores)} (**{np.mean(scores):.3f}**) | {fixed} / {broke}{extra} |")

    n = sum(len(t) for t in truth)
    print(f"{len(sets)} files, {n} judged sections ({', '.join(str(len(t)) for t in truth)})")
    if args.model is None:  # the crops were saved with the shipped model: its classes must come back
        agree = np.mean(np.concatenate([b == s["pipeline_class"] for b, s in zip(base, sets)]))
        print(f"the shipped model's classes on these crops agree with the pipeline run's on {100 * agree:.1f} % "
              "(float16 storage moves a few near-ties)")
    print("| variant | macro-F1 per file (mean) | fixed / broke against the first model |")
    print("| --- | --- | --- |")
    for m in models:
        name = Path(m).name
        p = probs[m]
        report(name, [x.argmax(1) for x in p["plain"]])
        report(f"{name} + flip_h", [(a + b).argmax(1) for a, b in zip(p["plain"], p["flip_h"])])
        report(f"{name} + flip_h, flip_v, rot90", [sum(p[k][i] for k in p).argmax(1) for i in range(len(sets))])
    if len(models) > 1:
        report("ensemble of all models", [sum(probs[m]["plain"][i] for m in models).argmax(1) for i in range(len(sets))])
    for thr in args.selective:
        preds, n_extra = [], 0
        for plain, flipped in zip(probs[first]["plain"], probs[first]["flip_h"]):
            unsure = plain.max(1) < thr
            mixed = plain.copy()
            mixed[unsure] += flipped[unsure]
            preds.append(mixed.argmax(1))
            n_extra += int(unsure.sum())
        report(f"{Path(first).name} + flip_h where top probability < {thr}", preds, n_extra / n)
    print("reproduce: python bench/class_variants.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
