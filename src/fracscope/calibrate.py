"""A lab's own class boundaries: refit the phase model file's class rule on the lab's labels.

    fracscope-calibrate RUN_DIR/particles.csv labels.csv my_phases.onnx [--prior-strength auto|S] [--plain]

Labs draw the line between *intact* and *mildly damaged* differently. The class of the default route
(``classify=native``) is a multinomial logistic regression on each particle's crack columns and the section
net's class probabilities (``net_p_*``; `fracscope.classify.CrackClassifier`, stored as ``class_rule`` in the phase
model file). Those inputs are all columns of particles.csv, so the rule can be refitted from a finished run
and a labels CSV (``image,page,particle_id,class``) without running any network again: the new rule is
written into a copy of the phase model file, which ``infer.py phase_model_path=NEW.onnx`` then uses.

The fit can be pulled towards the shipped rule (an L2 penalty on the difference of the coefficients,
`--prior-strength`; the intercepts are free), so that a few dozen labels shift its boundaries instead of drawing
new ones, or refit from scratch (`--plain`). By default the command picks between them by cross-validation on
the labels themselves (`choose_strength`); bench/few_labels.py compares the routes.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fracscope.classify import (
    CRACK_FEATURES,
    HEAD_FEATURES,
    SECTION_FEATURES,
    CrackClassifier,
    class_rule_from_dict,
    crack_features,
)
from fracscope.cli import UsageError
from fracscope.scores import ClassScores
from fracscope.types import CLASS_NAMES

LABEL_COLUMNS: tuple[str, ...] = ("image", "page", "particle_id", "class")
#: Fewer labels of a class than this cannot place its boundary (and 5-fold agreement cannot be reported).
MIN_LABELS_PER_CLASS = 3
#: The routes `choose_strength` picks from: None = a plain refit, a number = the L2 pull (per labelled particle)
#: of the coefficients towards the shipped rule's. A lab whose line lies near the shipped one gains from a
#: strong pull with few labels; one that draws it elsewhere needs a weak one (bench/few_labels.py).
STRENGTHS: tuple[float | None, ...] = (None, 0.1, 1.0, 10.0)
#: Choose the strength by cross-validation on the labels themselves.
AUTO = "auto"
#: L2 penalty towards 0 of a plain refit (`CrackClassifier.fit`'s default).
PLAIN_L2 = 1e-2


@dataclass(frozen=True)
class Calibration:
    """What `run` did: the labels it used and how the shipped and the refitted rule agree with them."""

    out_path: Path
    rule: CrackClassifier
    strength: float | None  # the pull towards the shipped rule it was fitted with; None: a plain refit
    n_per_class: tuple[int, ...]  # labels per class, CLASS_NAMES order
    kappa_shipped: float  # the shipped rule against the labels
    kappa_cv: float  # the refitted route against the labels, 5-fold cross-validated (each fold fitted without it)
    seconds: float


def read_labels(path: str | Path) -> pd.DataFrame:
    """The labels CSV: one row per labelled particle, ``image,page,particle_id,class`` (page may be left out: 0)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} not found")
    labels = pd.read_csv(path, dtype={"image": str, "class": str})
    if "page" not in labels.columns:
        labels["page"] = 0
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise UsageError(f"{path.name} lacks the column(s) {', '.join(missing)}; expected {','.join(LABEL_COLUMNS)}")
    labels["class"] = labels["class"].str.strip()
    unknown = sorted(set(labels["class"]) - set(CLASS_NAMES))
    if unknown:
        raise UsageError(f"{path.name}: unknown class name(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(CLASS_NAMES)}")
    if labels.duplicated(["image", "page", "particle_id"]).any():
        first = labels[labels.duplicated(["image", "page", "particle_id"])].iloc[0]
        raise UsageError(f"{path.name}: particle {first['image']} page {first['page']} id {first['particle_id']} "
                         "is labelled twice")
    return labels


def read_particles(path: str | Path) -> pd.DataFrame:
    """particles.csv of a run (the file, or the run folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "particles.csv"
    if not path.is_file():
        raise FileNotFoundError(f"particles table {path} not found")
    return pd.read_csv(path, dtype={"image": str})


def labelled_rows(particles: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The particles.csv row of every label (the label's class in ``label``), in label order.

    A label's image is matched to particles.csv's ``image`` as written there, or else by file name
    when that is unique in the table (a spreadsheet may hold only the name).
    """
    images = particles["image"].astype(str)
    known = set(images.unique())
    names = pd.Series([Path(i).name for i in known], index=list(known))
    unique = names[~names.duplicated(keep=False)]
    by_name = dict(zip(unique.to_numpy(), unique.index))
    image = [i if i in known else by_name.get(Path(i).name, "") or i for i in labels["image"].astype(str)]
    keyed = labels.assign(image=image, page=labels["page"].astype(int), particle_id=labels["particle_id"].astype(int))
    rows = keyed.rename(columns={"class": "label"}).merge(
        particles.assign(image=images), on=["image", "page", "particle_id"], how="left", indicator=True)
    lost = rows[rows["_merge"] == "left_only"]
    if len(lost):
        r = lost.iloc[0]
        raise UsageError(f"{len(lost)} labelled particle(s) are not in particles.csv, e.g. image {r['image']!r} "
                         f"page {r['page']} particle_id {r['particle_id']}")
    return rows.drop(columns="_merge")


def evidence(rows: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """The (N, F) features a class rule reads, from particles.csv rows."""
    absent = [f for f in features if f in HEAD_FEATURES + SECTION_FEATURES and f not in rows.columns]
    empty = [f for f in features if f in rows.columns and rows[f].isna().any()]
    if absent or empty:
        raise UsageError(f"the class rule reads {', '.join(absent + empty)}, which particles.csv "
                         f"{'lacks' if absent else 'leaves empty for some labelled particles'}: rerun infer "
                         "(classify=native, the default) with this version")
    records = rows.to_dict("records")
    return np.stack([crack_features(r, features) for r in records]) if records else np.zeros((0, len(features)))


def fit_rule(x: np.ndarray, y: np.ndarray, shipped: CrackClassifier | None, strength: float | None) -> CrackClassifier:
    """The lab's rule: pulled towards `shipped` with L2 `strength`, or (None / no shipped logistic) refitted from
    scratch with a small L2 towards 0; bounded as the shipped rule is (`CrackClassifier.fit(monotone=True)`),
    so that a few labels cannot teach it that more crack means intact."""
    features = shipped.features if shipped is not None else CRACK_FEATURES
    if strength is None or shipped is None:
        return CrackClassifier.fit(x, y, features, l2=PLAIN_L2, monotone=True)
    return CrackClassifier.fit(x, y, features, l2=strength, prior=shipped, monotone=True)


def cross_validated(x: np.ndarray, y: np.ndarray, shipped: CrackClassifier | None, strength: float | None,
                    folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N, 3) probabilities of every label from a rule fitted without its fold (folds stratified by class)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in range(len(CLASS_NAMES)):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % folds
    probs = np.empty((len(y), len(CLASS_NAMES)))
    for k in range(folds):
        test = fold == k
        if test.any():
            probs[test] = fit_rule(x[~test], y[~test], shipped, strength).predict_proba(x[test])
    return probs


def choose_strength(x: np.ndarray, y: np.ndarray, shipped: CrackClassifier | None) -> float | None:
    """The route of `STRENGTHS` whose 5-fold cross-validated log-loss on the labels is lowest (ties: the first)."""
    if shipped is None:
        return None
    losses = [-np.log(np.clip(cross_validated(x, y, shipped, s)[np.arange(len(y)), y], 1e-12, None)).mean()
              for s in STRENGTHS]
    return STRENGTHS[int(np.argmin(losses))]


def calibrated_rule(x: np.ndarray, y: np.ndarray, shipped: CrackClassifier | None,
                    strength: float | None | str = AUTO) -> tuple[CrackClassifier, float | None]:
    """The lab's rule and the strength it was fitted with (`AUTO`: `choose_strength`)."""
    chosen = choose_strength(x, y, shipped) if strength == AUTO else strength
    return fit_rule(x, y, shipped, chosen), chosen  # type: ignore[arg-type]


def run(particles_csv: str | Path, labels_csv: str | Path, out_path: str | Path,
        phase_model_path: str | Path | None = None, strength: float | None | str = AUTO) -> Calibration:
    """Fit the lab's class rule and write it into a copy of the phase model file at `out_path`.

    `particles_csv` is a run's particles.csv (or its folder), `labels_csv` the lab's labels,
    `phase_model_path` the phase model file the run used (default: the shipped one). `strength`: the pull
    towards the shipped rule (a number >= 0), None for a plain refit, or `AUTO` (`choose_strength`).
    """
    from fracscope.assets import resolve_phase_model
    from fracscope.model_file import PhaseMetadata, read_metadata, write_metadata

    t0 = time.perf_counter()
    source = Path(resolve_phase_model(str(phase_model_path) if phase_model_path else None))
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise UsageError(f"the new phase model file must end in .onnx, got {out_path}")
    if out_path.exists() and out_path.resolve() == source.resolve():
        raise UsageError(f"{out_path} is the phase model file the rule starts from: write the new one elsewhere")
    if strength != AUTO and strength is not None and not float(strength) >= 0:  # type: ignore[arg-type]
        raise UsageError(f"--prior-strength must be auto or a number >= 0, got {strength}")
    meta = read_metadata(source, PhaseMetadata)
    shipped_rule = class_rule_from_dict(meta.class_rule)
    shipped = shipped_rule if isinstance(shipped_rule, CrackClassifier) else None
    features = shipped.features if shipped is not None else CRACK_FEATURES

    labels = read_labels(labels_csv)
    rows = labelled_rows(read_particles(particles_csv), labels)
    y = np.asarray([CLASS_NAMES.index(c) for c in rows["label"]], np.int64)
    counts = np.bincount(y, minlength=len(CLASS_NAMES))
    if counts.min() < MIN_LABELS_PER_CLASS:
        have = ", ".join(f"{n} {c}" for c, n in zip(CLASS_NAMES, counts))
        raise UsageError(f"too few labels: each class needs at least {MIN_LABELS_PER_CLASS} labelled particles "
                         f"(have {have})")
    x = evidence(rows, features)

    rule, chosen = calibrated_rule(x, y, shipped, strength)
    kappa_shipped = ClassScores.from_labels(y, shipped_rule.predict_proba(x, features).argmax(1)).kappa
    kappa_cv = ClassScores.from_labels(y, cross_validated(x, y, shipped, chosen).argmax(1)).kappa
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    shutil.copyfile(source, tmp)
    write_metadata(tmp, dataclasses.replace(meta, class_rule=rule.to_dict()))
    tmp.replace(out_path)
    return Calibration(out_path, rule, chosen, tuple(int(n) for n in counts), kappa_shipped, kappa_cv,
                       time.perf_counter() - t0)


DESCRIPTION = """\
Refit the class rule (intact / mildly_damaged / broken) of a phase model file on a lab's own labels, from a
finished run's particles.csv, and write it into a copy of the file. Then: infer.py phase_model_path=NEW.onnx

The labels CSV has the columns image,page,particle_id,class (image and particle_id as in particles.csv; class one
of intact, mildly_damaged, broken), at least 3 particles of each class; 100-200 labels recover most of a lab's
boundary (docs/BENCHMARKS.md, "Few-label calibration").

example:
  fracscope-calibrate runs/lab/particles.csv labels.csv models/lab_phases.onnx
"""


def main(argv: Sequence[str] | None = None) -> int:
    """The calibrate command; usage errors are one line and exit status 2."""
    import argparse

    from fracscope.cli import ArgumentParser, usage_errors

    parser = ArgumentParser(prog="fracscope-calibrate", description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("particles", help="a run's particles.csv (or the run folder)")
    parser.add_argument("labels", help="labels CSV: image,page,particle_id,class")
    parser.add_argument("out", help="the new phase model file (.onnx) to write")
    parser.add_argument("--phase-model", default=None,
                        help="the phase model file the run used (default: the shipped models/fracscope_phases.onnx)")
    parser.add_argument("--prior-strength", default=AUTO,
                        help="L2 pull of the coefficients towards the shipped rule's (a number >= 0), or auto "
                             f"(default): the one of plain, {', '.join(str(s) for s in STRENGTHS if s is not None)} "
                             "with the best 5-fold cross-validated log-loss on the labels")
    parser.add_argument("--plain", action="store_true", help="refit from scratch, ignoring the shipped rule")
    args = parser.parse_args(argv)
    with usage_errors(parser.prog):
        strength = None if args.plain else args.prior_strength
        if strength not in (None, AUTO):
            try:
                strength = float(strength)
            except ValueError:
                raise UsageError(f"--prior-strength must be auto or a number >= 0, got {strength!r}") from None
        result = run(args.particles, args.labels, args.out, args.phase_model, strength)
    counts = ", ".join(f"{n} {c}" for c, n in zip(CLASS_NAMES, result.n_per_class))
    print(f"{sum(result.n_per_class)} labels ({counts}); agreement with them (Cohen's kappa): shipped rule "
          f"{result.kappa_shipped:.3f}, refitted rule {result.kappa_cv:.3f} (5-fold cross-validated; "
          + ("plain refit" if result.strength is None else f"pulled towards the shipped rule, strength "
             f"{result.strength:g}") + ")")
    print(f"wrote {result.out_path} in {result.seconds:.1f} s; use it: "
          f"python infer.py input=... output=... phase_model_path={result.out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
