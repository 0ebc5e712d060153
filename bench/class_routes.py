"""Compare the routes from native crack evidence to a damage class, on tuning fields; ship the best.

    python bench/pipeline_accuracy.py --tuning-seed 555 --detector learned --pairs-csv /tmp/fit.csv
    python bench/pipeline_accuracy.py --tuning-seed 556 --detector learned --pairs-csv /tmp/eval.csv
    python bench/class_routes.py --fit /tmp/fit.csv --eval /tmp/eval.csv [--head-eval /tmp/eval_head.csv]
                                 [--write models/fracscope_phases.onnx]

Both pairs files come from runs with the native phase model; their rows are matched particles with the
true class and the measured crack columns (`pred_*`). Routes, all fitted on `--fit` only:
- rule: broken when the cracks split the section, mildly damaged when the longest crack is at least a
  fraction t of the diameter (t swept on the fit pairs for the best macro-F1), else intact
  (`fracscope.classify.CrackRule`);
- logistic: multinomial logistic regression on `fracscope.classify.CRACK_FEATURES`, classes weighted by the
  square root of their inverse frequency (`--class-weight`; `CrackClassifier.fit`);
- head (if `--head-eval` is given): the crop model's class head, from a run with ``--classify head``.
Each is scored on the judged pairs of `--eval`: macro-F1 and the class fractions per preset.
`--write` stores the route with the best macro-F1 on `--eval` in the phase model file's ``class_rule``.
Never use the held-out fields here.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from fracscope.classify import CRACK_FEATURES, CrackClassifier, CrackRule, crack_features
from fracscope.scores import ClassScores
from fracscope.types import CLASS_NAMES

RULE_GRID = np.round(np.arange(0.0, 0.41, 0.01), 3)


def load_pairs(path: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Judged pairs, their crack features (N, F) and true classes (N,)."""
    pairs = pd.read_csv(path)
    pairs = pairs[pairs["judged"]].reset_index(drop=True)
    rows = [{c[5:]: v for c, v in r.items() if c.startswith("pred_")} for r in pairs.to_dict("records")]
    x = np.stack([crack_features(r) for r in rows]) if rows else np.zeros((0, len(CRACK_FEATURES)))
    return pairs, x, pairs["true_class"].to_numpy()


def describe(name: str, pairs: pd.DataFrame, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, str]:
    scores = ClassScores.from_labels(y_true, y_pred)
    preset = pairs["image"].str.split("__").str[0].to_numpy()
    parts = []
    for p in sorted(set(preset)):
        sel = preset == p
        t = np.bincount(y_true[sel], minlength=3) / sel.sum()
        q = np.bincount(y_pred[sel], minlength=3) / sel.sum()
        parts.append(f"{p}: " + ", ".join(f"{n[:6]} {100 * a:.1f}->{100 * b:.1f}" for n, a, b in zip(CLASS_NAMES, t, q))
                     + f" (max |err| {100 * np.abs(q - t).max():.1f} pp)")
    return scores.macro_f1, f"| {name} | {scores.macro_f1:.3f} | " + " | ".join(f"{r:.3f}" for r in scores.recall) \
        + " | " + "; ".join(parts) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fit", required=True, help="pairs CSV of tuning fields to fit on")
    ap.add_argument("--eval", required=True, help="pairs CSV of other tuning fields to score on")
    ap.add_argument("--head-eval", default=None, help="pairs CSV of the --eval fields run with --classify head")
    # Chosen on the tuning pairs (fit 555, eval 556): l2 1e-3 and 1e-2 within 0.01 macro-F1; inverse-frequency
    # weights raise broken recall but over-call broken by 3-5 pp, none under-calls it, the square root lies between.
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--class-weight", choices=["none", "sqrt", "balanced"], default="sqrt",
                    help="logistic class weights: none, inverse frequency (balanced) or its square root")
    ap.add_argument("--write", default=None, metavar="PHASE_MODEL_ONNX",
                    help="store the best route in this phase model file's class_rule")
    args = ap.parse_args()

    fit_pairs, x_fit, y_fit = load_pairs(args.fit)
    eval_pairs, x_eval, y_eval = load_pairs(args.eval)
    print(f"fit: {len(y_fit)} judged sections ({args.fit}); eval: {len(y_eval)} ({args.eval})")

    f1_by_t = [ClassScores.from_labels(y_fit, CrackRule(t).predict_proba(x_fit).argmax(1)).macro_f1 for t in RULE_GRID]
    rule = CrackRule(float(RULE_GRID[int(np.argmax(f1_by_t))]))
    print(f"rule: best min_longest_crack_frac on the fit pairs {rule.min_longest_crack_frac} "
          f"(macro-F1 {max(f1_by_t):.3f} there)")
    counts = np.bincount(y_fit, minlength=3).astype(float)
    inverse = counts.sum() / np.maximum(counts, 1) / 3
    weights = {"none": None, "sqrt": np.sqrt(inverse), "balanced": inverse}[args.class_weight]
    logistic = CrackClassifier.fit(x_fit, y_fit, l2=args.l2, class_weight=weights)

    routes = {"rule": rule, "logistic": logistic}
    print("| route | macro-F1 | recall " + " | recall ".join(CLASS_NAMES) + " | class fractions true->pred % |")
    print("| --- | --- | --- | --- | --- | --- |")
    best, best_f1 = None, -1.0
    for name, route in routes.items():
        f1, line = describe(name, eval_pairs, y_eval, route.predict_proba(x_eval).argmax(1))
        print(line)
        if f1 > best_f1:
            best, best_f1 = name, f1
    if args.head_eval:
        head = pd.read_csv(args.head_eval)
        head = head[head["judged"]].reset_index(drop=True)
        print(describe("head (crop model)", head, head["true_class"].to_numpy(), head["pred_class"].to_numpy())[1])
    print(f"best native route on the eval pairs: {best} (macro-F1 {best_f1:.3f}): {routes[best].to_dict()}")
    if args.write:
        from fracscope.model_file import PhaseMetadata, read_metadata, write_metadata
        import dataclasses

        meta = read_metadata(args.write, PhaseMetadata)
        write_metadata(args.write, dataclasses.replace(meta, class_rule=routes[best].to_dict()))
        print(f"wrote the {best} route into {args.write}")
    print("reproduce: python bench/class_routes.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
