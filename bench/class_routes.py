"""Compare the routes from native crack evidence to a damage class, on tuning fields; ship the best.

    python bench/pipeline_accuracy.py --tuning-seed 555 --detector learned --pairs-csv /tmp/fit.csv
    python bench/pipeline_accuracy.py --tuning-seed 556 --detector learned --pairs-csv /tmp/eval.csv
    python bench/class_routes.py --fit /tmp/fit.csv [more.csv ...] --eval /tmp/eval.csv [--head-probs]
                                 [--write models/fracscope_phases.onnx]

Both pairs files come from runs with the native phase model; their rows are matched particles with the
true class and the measured crack columns (`pred_*`). Routes, all fitted on `--fit` only:
- rule: broken when the cracks split the section, mildly damaged when the longest crack is at least a
  fraction t of the diameter (t swept on the fit pairs for the best macro-F1), else intact
  (`fracscope.classify.CrackRule`);
- logistic: multinomial logistic regression on `fracscope.classify.CRACK_FEATURES`, classes weighted by the
  square root of their inverse frequency (`--class-weight`; `CrackClassifier.fit`);
- with `--monotone`, each logistic route again with the constraint that more crack evidence (and a network's
  higher p of a damaged class) never makes intact more likely (`CrackClassifier.fit(monotone=True)`);
- with `--head-probs` (pairs of ``--classify head`` runs, whose ``p_*`` columns are the crop model's class head):
  logistic+head, the logistic regression on the crack features and the head's three probabilities, and the
  head alone.
Each is scored on the judged pairs of `--eval`: macro-F1 and the class fractions per preset.
`--write` stores the route with the best macro-F1 on `--eval` in the phase model file's ``class_rule``.
Never use the held-out fields here.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from fracscope.classify import (
    CRACK_FEATURES,
    HEAD_FEATURES,
    SECTION_FEATURES,
    CrackClassifier,
    CrackRule,
    crack_features,
)
from fracscope.scores import ClassScores
from fracscope.types import CLASS_NAMES

RULE_GRID = np.round(np.arange(0.0, 0.41, 0.01), 3)


def load_pairs(path: str | list[str], names=CRACK_FEATURES) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Judged pairs of one pairs CSV or several, their features `names` (N, F) and true classes (N,).

    With `HEAD_FEATURES` among `names` the pairs must come from a ``--classify head`` run: its
    ``pred_p_*`` columns are then the crop model's class head.
    """
    paths = [path] if isinstance(path, str) else list(path)
    pairs = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    pairs = pairs[pairs["judged"]].reset_index(drop=True)
    rows = []
    for r in pairs.to_dict("records"):
        row = {c[5:]: v for c, v in r.items() if c.startswith("pred_")}
        # Older pairs files lack the head columns: their p_* are the head's under --classify head.
        row.update({f"head_{k}": v for k, v in list(row.items()) if k.startswith("p_") and f"head_{k}" not in row})
        rows.append(row)
    x = np.stack([crack_features(r, names) for r in rows]) if rows else np.zeros((0, len(names)))
    return pairs, x, pairs["true_class"].to_numpy()


def load_drawn(path: str, min_length_um: float, names=CRACK_FEATURES) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Features `names`, classes and rows of `bench/crack_visibility.py --csv` sections: drawn cracks at least
    `min_length_um` long are mildly damaged, sections without a crack intact (detected and judged only)."""
    rows = pd.read_csv(path)
    rows = rows[rows["detected"] & rows["judged"]]
    rows = rows[(rows["width_px"] == 0) | (rows["length_um"] >= min_length_um)].reset_index(drop=True)
    records = []
    for r in rows.to_dict("records"):
        row = {c[5:]: v for c, v in r.items() if c.startswith("pred_")}
        row.update({f"head_{k}": v for k, v in list(row.items()) if k.startswith("p_") and f"head_{k}" not in row})
        records.append(crack_features(row, names))
    y = np.where(rows["width_px"].to_numpy() > 0, CLASS_NAMES.index("mildly_damaged"), CLASS_NAMES.index("intact"))
    return np.stack(records), y, rows


def drawn_recall(route, path: str) -> str:
    """Recall of damaged by crack length, and false damage, of `route` on crack_visibility sections."""
    names = getattr(route, "features", CRACK_FEATURES)
    x, _, rows = load_drawn(path, 0.0, names)
    damaged = route.predict_proba(x).argmax(1) > 0
    parts = []
    for length in sorted(rows.loc[rows["width_px"] > 0, "length_um"].unique()):
        sel = ((rows["width_px"] > 0) & (rows["length_um"] == length)).to_numpy()
        parts.append(f"{length:g} um {100 * damaged[sel].mean():.0f} %")
    intact = (rows["width_px"] == 0).to_numpy()
    return "damaged recall " + ", ".join(parts) + f"; false damage {100 * damaged[intact].mean():.0f} %"


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
    ap.add_argument("--fit", required=True, nargs="+", help="pairs CSV(s) of tuning fields to fit on")
    ap.add_argument("--eval", required=True, help="pairs CSV of other tuning fields to score on")
    ap.add_argument("--section-probs", action="store_true",
                    help="the pairs carry the section net's probabilities (pred_net_p_*): also fit logistic+net "
                         "(crack features and the net's three probabilities) and score the net alone")
    ap.add_argument("--head-probs", action="store_true",
                    help="the pairs come from --classify head runs: also fit logistic+head (crack features and the "
                         "crop model's class probabilities) and score the head alone")
    # Chosen on the tuning pairs (fit 555, eval 556): l2 1e-3 and 1e-2 within 0.01 macro-F1; inverse-frequency
    # weights raise broken recall but over-call broken by 3-5 pp, none under-calls it, the square root lies between.
    ap.add_argument("--drawn-fit", default=None, metavar="CSV",
                    help="also fit on the sections of a bench/crack_visibility.py --csv run (another seed than the "
                         "bench's): drawn cracks of at least --drawn-min-um are mildly damaged")
    ap.add_argument("--drawn-min-um", type=float, default=1.0)
    ap.add_argument("--drawn-eval", default=None, metavar="CSV",
                    help="also report each route's damaged recall by crack length on these crack_visibility sections")
    ap.add_argument("--monotone", action="store_true",
                    help="also fit each logistic route with more crack evidence never favouring intact "
                         "(`CrackClassifier.fit(monotone=True)`), as '<route> monotone'")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--class-weight", choices=["none", "sqrt", "balanced"], default="sqrt",
                    help="logistic class weights: none, inverse frequency (balanced) or its square root")
    ap.add_argument("--write", default=None, metavar="PHASE_MODEL_ONNX",
                    help="store the best route (or --route) in this phase model file's class_rule")
    ap.add_argument("--route", default=None, help="the route --write stores (default: the best macro-F1 on --eval)")
    args = ap.parse_args()

    fit_pairs, x_fit, y_fit = load_pairs(args.fit)
    y_pairs = y_fit  # the head probabilities exist for the pairs only
    if args.drawn_fit:
        x_drawn, y_drawn, _ = load_drawn(args.drawn_fit, args.drawn_min_um)
        print(f"drawn sections added to the fit: {len(y_drawn)} ({int((y_drawn > 0).sum())} with a crack of at least "
              f"{args.drawn_min_um} um) from {args.drawn_fit}")
        x_fit, y_fit = np.concatenate([x_fit, x_drawn]), np.concatenate([y_fit, y_drawn])
    eval_pairs, x_eval, y_eval = load_pairs(args.eval)
    print(f"fit: {len(y_fit)} judged sections ({args.fit}); eval: {len(y_eval)} ({args.eval})")

    f1_by_t = [ClassScores.from_labels(y_fit, CrackRule(t).predict_proba(x_fit).argmax(1)).macro_f1 for t in RULE_GRID]
    rule = CrackRule(float(RULE_GRID[int(np.argmax(f1_by_t))]))
    print(f"rule: best min_longest_crack_frac on the fit pairs {rule.min_longest_crack_frac} "
          f"(macro-F1 {max(f1_by_t):.3f} there)")
    counts = np.bincount(y_fit, minlength=3).astype(float)
    inverse = counts.sum() / np.maximum(counts, 1) / 3
    weights = {"none": None, "sqrt": np.sqrt(inverse), "balanced": inverse}[args.class_weight]
    fit_data = {"logistic": (x_fit, y_fit, CRACK_FEATURES)}  # route: its fit features, classes, names
    if args.head_probs:
        names = CRACK_FEATURES + HEAD_FEATURES
        _, xh_fit, _ = load_pairs(args.fit, names)
        yh_fit = y_pairs
        if args.drawn_fit:
            xh_drawn, yh_drawn, _ = load_drawn(args.drawn_fit, args.drawn_min_um, names)
            xh_fit, yh_fit = np.concatenate([xh_fit, xh_drawn]), np.concatenate([y_pairs, yh_drawn])
        fit_data["logistic+head"] = (xh_fit, yh_fit, names)
    if args.section_probs:  # the pairs only: drawn sections carry no net probabilities
        names = CRACK_FEATURES + SECTION_FEATURES
        fit_data["logistic+net"] = (load_pairs(args.fit, names)[1], y_pairs, names)
    routes = {"rule": rule}
    for name, (x, y, names) in fit_data.items():
        routes[name] = CrackClassifier.fit(x, y, names, l2=args.l2, class_weight=weights)
    if args.monotone:
        for name, (x, y, names) in fit_data.items():
            routes[f"{name} monotone"] = CrackClassifier.fit(x, y, names, l2=args.l2, class_weight=weights,
                                                             monotone=True)
    print("| route | macro-F1 | recall " + " | recall ".join(CLASS_NAMES) + " | class fractions true->pred % |")
    print("| --- | --- | --- | --- | --- | --- |")
    best, best_f1 = None, -1.0
    for name, route in routes.items():
        names = getattr(route, "features", CRACK_FEATURES)
        x = x_eval if tuple(names) == CRACK_FEATURES else load_pairs(args.eval, names)[1]
        f1, line = describe(name, eval_pairs, y_eval, route.predict_proba(x).argmax(1))
        print(line)
        if args.drawn_eval:
            print(f"|   {name} on drawn cracks | {drawn_recall(route, args.drawn_eval)} |")
        if f1 > best_f1:
            best, best_f1 = name, f1
    if args.head_probs:
        print(describe("head (crop model)", eval_pairs, y_eval, eval_pairs["pred_class"].to_numpy())[1])
    if args.section_probs:
        net_eval = load_pairs(args.eval, SECTION_FEATURES)[1]
        print(describe("section net alone", eval_pairs, y_eval, net_eval.argmax(1))[1])
    print(f"best native route on the eval pairs: {best} (macro-F1 {best_f1:.3f}): {routes[best].to_dict()}")
    if args.write:
        import dataclasses

        from fracscope.model_file import PhaseMetadata, read_metadata, write_metadata

        chosen = args.route or best
        meta = read_metadata(args.write, PhaseMetadata)
        write_metadata(args.write, dataclasses.replace(meta, class_rule=routes[chosen].to_dict()))
        print(f"wrote the {chosen} route into {args.write}")
    print("reproduce: python bench/class_routes.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
