"""Damage classes from crack evidence (numpy only: inference needs no torch).

Two routes live here. The default reads the native-resolution crack measurements
(`CrackRule`, `CrackClassifier`, bottom of the module). The older one corrects the crop
model's class head with crack topology (`combine_class_with_topology`):

Broken means the cracks split the section into fragments: a global connectivity
property a CNN's pooled features may learn poorly. The phase head's crack mask makes
it explicit: fragments >= 2 means broken; otherwise the class head chooses between
intact and mildly damaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fracscope.measure import MIN_FRAGMENT_FRACTION, count_fragments
from fracscope.types import CLASS_NAMES, Phase

INTACT, MILDLY, BROKEN = (CLASS_NAMES.index(n) for n in ("intact", "mildly_damaged", "broken"))


def combine_class_with_topology(
    probs: np.ndarray,
    phase_pred: np.ndarray,
    mask: np.ndarray,
    min_fragment_fraction: float = MIN_FRAGMENT_FRACTION,
) -> np.ndarray | int:
    """Class indices from the class head corrected by crack topology.

    Parameters
    ----------
    probs : ndarray, shape (N, 3) or (3,)
        Class probabilities in CLASS_NAMES order.
    phase_pred : ndarray of int, shape (N, H, W) or (H, W)
        Predicted phase codes.
    mask : ndarray of bool, shape (N, H, W) or (H, W)
        Each particle's own mask.
    min_fragment_fraction : float
        Fragments smaller than this fraction of the mask are crumbs (see
        `fracscope.measure.count_fragments`).

    Returns
    -------
    ndarray of int64, shape (N,), or int for a single particle
        Broken where the predicted cracks leave >= 2 fragments; otherwise intact or
        mildly damaged, whichever has the larger head probability once the head's
        broken probability is folded into "damaged" (the head saw cracks, the
        topology says they do not split the particle).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        return int(combine_class_with_topology(probs[None], np.asarray(phase_pred)[None], np.asarray(mask)[None],
                                               min_fragment_fraction)[0])
    phase_pred = np.asarray(phase_pred)
    mask = np.asarray(mask, dtype=bool)
    out = np.empty(len(probs), dtype=np.int64)
    for i in range(len(probs)):
        crack = mask[i] & (phase_pred[i] == Phase.CRACK)
        out[i] = class_from_fragments(probs[i], count_fragments(mask[i], crack, min_fraction=min_fragment_fraction))
    return out


def class_from_fragments(probs: np.ndarray, n_fragments: int) -> int:
    """The topology rule for one particle whose crack fragments are already counted.

    Broken when the cracks leave >= 2 fragments; otherwise intact or mildly damaged,
    whichever is larger once the head's broken probability is folded into "damaged".
    """
    if n_fragments >= 2:
        return BROKEN
    return MILDLY if probs[MILDLY] + probs[BROKEN] > probs[INTACT] else INTACT


# ------------------------------------------------------------------------------------------------
# Classes from the native-resolution crack measurements (`fracscope.measure`): the default route
# ------------------------------------------------------------------------------------------------

# Per-particle numbers a class decision may read, all unitless (lengths divided by the diameter), so a
# rule or classifier means the same at any pixel size and with lengths in px.
CRACK_FEATURES: tuple[str, ...] = (
    "crack_pct",
    "crack_length_per_diameter",
    "crack_reach_frac",
    "crack_reaches_surface",
    "crack_splits_section",
    "crack_splits_bridged",
    "longest_crack_frac",
    "n_cracks",
)


# The crop model's class-head probabilities, for a class rule that reads them beside the crack measurements.
HEAD_FEATURES: tuple[str, ...] = tuple(f"head_p_{name}" for name in CLASS_NAMES)


# The section net's class probabilities (`fracscope.sections.SectionNetModel`), for a class rule that reads
# them beside the crack measurements (the default since issue 18's section net).
SECTION_FEATURES: tuple[str, ...] = tuple(f"net_p_{name}" for name in CLASS_NAMES)


def needs_head(rule: Any) -> bool:
    """Whether a class rule reads the crop model's class head (`HEAD_FEATURES`)."""
    return any(name in HEAD_FEATURES for name in getattr(rule, "features", ()))


def needs_sections(rule: Any) -> bool:
    """Whether a class rule reads the section net's probabilities (`SECTION_FEATURES`)."""
    return any(name in SECTION_FEATURES for name in getattr(rule, "features", ()))


def crack_features(measurements: Mapping[str, float], names: Sequence[str] = CRACK_FEATURES) -> np.ndarray:
    """The named features of one particle from its measurement columns (float64)."""
    m = dict(measurements)
    diameter = float(m.get("eq_diameter_um", 0.0))
    m["crack_length_per_diameter"] = float(m.get("crack_length_um", 0.0)) / diameter if diameter > 0 else 0.0
    try:
        return np.asarray([float(m[n]) for n in names], np.float64)
    except KeyError as err:
        raise KeyError(f"crack feature {err} is not among the measurements {sorted(m)}") from None


@dataclass(frozen=True)
class CrackRule:
    """The class as a person reads the crack map: a rule on two measurements.

    broken : the cracks split the section into >= 2 fragments (`crack_splits_section`);
    mildly damaged : otherwise, the longest crack is at least `min_longest_crack_frac` of the
        section's diameter;
    intact : otherwise.
    The probabilities it reports are one-hot.
    """

    min_longest_crack_frac: float = 0.05

    KIND: ClassVar[str] = "rule"

    def predict_proba(self, features: np.ndarray, names: Sequence[str] = CRACK_FEATURES) -> np.ndarray:
        x = np.atleast_2d(np.asarray(features, np.float64))
        split = x[:, list(names).index("crack_splits_section")] >= 0.5
        longest = x[:, list(names).index("longest_crack_frac")]
        cls = np.where(split, BROKEN, np.where(longest >= self.min_longest_crack_frac, MILDLY, INTACT))
        return np.eye(len(CLASS_NAMES))[cls]

    def predict_measured(self, measurements: Mapping[str, float]) -> np.ndarray:
        """Class probabilities (3,) of one particle from its measurement columns."""
        return self.predict_proba(crack_features(measurements))[0]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "min_longest_crack_frac": float(self.min_longest_crack_frac)}


def damage_evidence_sign(name: str) -> int:
    """+1 for a feature whose growth means more damage (every crack column, a network's p of a damaged
    class), -1 for a network's p of intact, 0 for anything else."""
    if name in CRACK_FEATURES:
        return 1
    if name.endswith("p_intact"):
        return -1
    if name.endswith(("p_mildly_damaged", "p_broken")):
        return 1
    return 0


@dataclass(frozen=True)
class CrackClassifier:
    """Multinomial logistic regression on standardised crack features (numpy only at inference).

    Fitted on tuning fields (`bench/class_routes.py`), stored in the phase model file's
    ``class_rule``; its probabilities are calibrated on those fields.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]  # (3, F)
    intercept: tuple[float, ...]  # (3,)

    KIND: ClassVar[str] = "logistic"

    def predict_measured(self, measurements: Mapping[str, float]) -> np.ndarray:
        """Class probabilities (3,) of one particle from its measurement columns (and head probabilities)."""
        return self.predict_proba(crack_features(measurements, self.features))[0]

    def predict_proba(self, features: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
        x = np.atleast_2d(np.asarray(features, np.float64))
        if names is not None and tuple(names) != self.features:
            x = x[:, [list(names).index(n) for n in self.features]]
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = z @ np.asarray(self.coef).T + np.asarray(self.intercept)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, features: Sequence[str] = CRACK_FEATURES,
            l2: float = 1e-2, class_weight: Sequence[float] | None = None,
            prior: CrackClassifier | None = None, monotone: bool = False) -> CrackClassifier:
        """Maximum-likelihood fit with an L2 penalty `l2` (per sample) on the coefficients (L-BFGS).

        With a `prior` (a fitted rule on the same `features`) the features keep the prior's standardisation,
        the fit starts from its coefficients and the penalty pulls the coefficients towards them instead of
        towards 0 (the intercepts are free): few labels then move the prior's boundaries rather than draw
        new ones from scratch.

        With `monotone`, more damage evidence never makes *intact* more likely against either damaged class
        (`damage_evidence_sign`): the fit is bounded so that, for each evidence feature, the intact
        coefficient is at most (for a probability of intact: at least) each damaged class's. A linear
        rule fitted freely can otherwise learn from collinear columns that e.g. more crack area means
        intact, which breaks on images whose cracks look unlike the tuning fields'.
        """
        from scipy.optimize import minimize

        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.int64)
        k, f = len(CLASS_NAMES), x.shape[1]
        if prior is not None:
            if tuple(prior.features) != tuple(features):
                raise ValueError(f"the prior reads {list(prior.features)}, not {list(features)}")
            mean, scale = np.asarray(prior.mean, np.float64), np.asarray(prior.scale, np.float64)
            coef0 = np.asarray(prior.coef, np.float64)
            theta0 = np.concatenate([coef0.ravel(), np.asarray(prior.intercept, np.float64)])
        else:
            mean = x.mean(axis=0)
            scale = x.std(axis=0)
            scale[scale < 1e-9] = 1.0
            coef0, theta0 = np.zeros((k, f)), np.zeros(k * f + k)
        z = (x - mean) / scale
        onehot = np.eye(k)[y]
        w_class = np.ones(k) if class_weight is None else np.asarray(class_weight, np.float64)
        w = w_class[y] / w_class[y].sum()

        # Coefficients as the intact row plus each class's difference from it (0 for intact itself): the
        # monotone bounds are then bounds on single parameters, which L-BFGS-B takes.
        to_coef = np.eye(k)
        to_coef[:, INTACT] = 1.0  # coef = to_coef @ rows, rows = [intact, d_mild, d_broken]

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            rows, b = theta[: k * f].reshape(k, f), theta[k * f:]
            coef = to_coef @ rows
            logits = z @ coef.T + b
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            p = np.exp(logp)
            value = -(w * (onehot * logp).sum(axis=1)).sum() + 0.5 * l2 * ((coef - coef0) ** 2).sum()
            g = (p - onehot) * w[:, None]
            grad_coef = g.T @ z + l2 * (coef - coef0)
            grad = np.concatenate([(to_coef.T @ grad_coef).ravel(), g.sum(axis=0)])
            return float(value), grad

        rows0 = np.linalg.solve(to_coef, theta0[: k * f].reshape(k, f))
        bounds = [(None, None)] * (k * f + k)
        if monotone:
            signs = [damage_evidence_sign(name) for name in features]
            for c in range(k):
                for j, sign in enumerate(signs):
                    if c != INTACT and sign:
                        bounds[c * f + j] = (0.0, None) if sign > 0 else (None, 0.0)
        start = np.concatenate([rows0.ravel(), theta0[k * f:]])
        res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
        coef, b = to_coef @ res.x[: k * f].reshape(k, f), res.x[k * f:]
        return cls(tuple(features), tuple(map(float, mean)), tuple(map(float, scale)),
                   tuple(tuple(map(float, row)) for row in coef), tuple(map(float, b)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "features": list(self.features), "mean": list(self.mean),
                "scale": list(self.scale), "coef": [list(r) for r in self.coef], "intercept": list(self.intercept)}


def class_rule_from_dict(d: Mapping[str, Any] | None) -> CrackRule | CrackClassifier:
    """The class decision stored in a phase model file (`PhaseMetadata.class_rule`); {} = the default rule."""
    d = dict(d or {})
    kind = d.pop("kind", CrackRule.KIND)
    if kind == CrackRule.KIND:
        return CrackRule(**d)
    if kind == CrackClassifier.KIND:
        return CrackClassifier(tuple(d["features"]), tuple(d["mean"]), tuple(d["scale"]),
                               tuple(tuple(r) for r in d["coef"]), tuple(d["intercept"]))
    raise ValueError(f"unknown class rule kind {kind!r}; valid: {CrackRule.KIND!r}, {CrackClassifier.KIND!r}")
