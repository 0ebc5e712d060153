"""The class decision on native crack measurements (`fracscope.classify`), on constructed inputs."""

import numpy as np
import pytest

from fracscope.classify import (
    CRACK_FEATURES,
    SECTION_FEATURES,
    CrackClassifier,
    CrackRule,
    class_rule_from_dict,
    crack_features,
    damage_evidence_sign,
)
from fracscope.types import CLASS_NAMES

INTACT, MILD, BROKEN = range(3)


def _measures(**kw):
    base = {"eq_diameter_um": 10.0, "crack_pct": 0.0, "crack_length_um": 0.0, "crack_reach_frac": 0.0,
            "crack_reaches_surface": 0.0, "crack_splits_section": 0.0, "crack_splits_bridged": 0.0,
            "longest_crack_frac": 0.0, "n_cracks": 0.0}
    return {**base, **kw}


def test_crack_features_divides_length_by_diameter_and_names_a_missing_column():
    f = crack_features(_measures(crack_length_um=5.0, crack_pct=1.5))
    assert f[CRACK_FEATURES.index("crack_length_per_diameter")] == pytest.approx(0.5)
    assert f[CRACK_FEATURES.index("crack_pct")] == pytest.approx(1.5)
    with pytest.raises(KeyError, match="n_cracks"):
        crack_features({"eq_diameter_um": 1.0, "crack_pct": 0.0, "crack_length_um": 0.0, "crack_reach_frac": 0,
                        "crack_reaches_surface": 0, "crack_splits_section": 0, "crack_splits_bridged": 0,
                        "longest_crack_frac": 0})


def test_rule_reads_split_then_longest_crack():
    rule = CrackRule(min_longest_crack_frac=0.1)
    x = np.stack([
        crack_features(_measures()),  # no crack
        crack_features(_measures(longest_crack_frac=0.05)),  # a speck below the threshold
        crack_features(_measures(longest_crack_frac=0.3)),  # a crack, one body
        crack_features(_measures(longest_crack_frac=1.0, crack_splits_section=1.0)),  # split
    ])
    assert rule.predict_proba(x).argmax(1).tolist() == [INTACT, INTACT, MILD, BROKEN]
    assert np.allclose(rule.predict_proba(x).sum(1), 1.0)


def test_logistic_fit_separates_constructed_classes_and_round_trips():
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for _ in range(60):
        rows.append(crack_features(_measures(longest_crack_frac=rng.uniform(0, 0.02))))
        labels.append(INTACT)
        rows.append(crack_features(_measures(longest_crack_frac=rng.uniform(0.2, 0.6), crack_pct=rng.uniform(0.5, 2))))
        labels.append(MILD)
        rows.append(crack_features(_measures(longest_crack_frac=rng.uniform(0.8, 1.2), crack_splits_section=1.0,
                                             crack_pct=rng.uniform(2, 5))))
        labels.append(BROKEN)
    x, y = np.stack(rows), np.asarray(labels)
    model = CrackClassifier.fit(x, y)
    p = model.predict_proba(x)
    assert p.shape == (len(y), len(CLASS_NAMES))
    assert np.allclose(p.sum(1), 1.0)
    assert (p.argmax(1) == y).mean() >= 0.98
    again = class_rule_from_dict(model.to_dict())
    assert isinstance(again, CrackClassifier)
    assert np.allclose(again.predict_proba(x), p)


def test_class_rule_from_dict_defaults_to_the_rule_and_refuses_unknown_kinds():
    assert isinstance(class_rule_from_dict({}), CrackRule)
    assert class_rule_from_dict(CrackRule(0.2).to_dict()) == CrackRule(0.2)
    with pytest.raises(ValueError, match="unknown class rule kind"):
        class_rule_from_dict({"kind": "forest"})


def test_monotone_fit_never_reads_more_crack_evidence_as_intact():
    # Constructed so that a free fit learns the wrong sign: intact sections carry much crack area (pores read
    # as crack), damaged ones long cracks of little area.
    rng = np.random.default_rng(1)
    rows, labels = [], []
    for _ in range(80):
        rows.append(crack_features(_measures(longest_crack_frac=rng.uniform(0, 0.1), crack_pct=rng.uniform(2, 4))))
        labels.append(INTACT)
        rows.append(crack_features(_measures(longest_crack_frac=rng.uniform(0.2, 0.6), crack_pct=rng.uniform(0, 1))))
        labels.append(MILD)
        rows.append(crack_features(_measures(longest_crack_frac=rng.uniform(0.7, 1.2), crack_splits_section=1.0,
                                             crack_pct=rng.uniform(0, 1))))
        labels.append(BROKEN)
    x, y = np.stack(rows), np.asarray(labels)
    pct = CRACK_FEATURES.index("crack_pct")
    free = np.asarray(CrackClassifier.fit(x, y).coef)
    assert free[INTACT, pct] > max(free[MILD, pct], free[BROKEN, pct])  # the trap is real
    model = CrackClassifier.fit(x, y, monotone=True)
    coef = np.asarray(model.coef)
    assert np.all(coef[INTACT] <= coef[MILD] + 1e-9) and np.all(coef[INTACT] <= coef[BROKEN] + 1e-9)
    # Growing any crack column lowers (never raises) the odds of intact against each damaged class.
    base = crack_features(_measures(longest_crack_frac=0.15, crack_pct=1.0))
    for j in range(len(CRACK_FEATURES)):
        more = base.copy()
        more[j] += 1.0
        p0, p1 = model.predict_proba(base)[0], model.predict_proba(more)[0]
        for damaged in (MILD, BROKEN):
            assert p1[INTACT] / p1[damaged] <= p0[INTACT] / p0[damaged] * (1 + 1e-9)
    assert (model.predict_proba(x).argmax(1) == y).mean() >= 0.9


def test_monotone_signs_of_network_probabilities():
    names = CRACK_FEATURES + SECTION_FEATURES
    assert [damage_evidence_sign(n) for n in SECTION_FEATURES] == [-1, 1, 1]
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    net = np.eye(3)[y] * 0.8 + 0.2 / 3
    cracks = np.stack([crack_features(_measures(longest_crack_frac=0.3 * c)) for c in y])
    model = CrackClassifier.fit(np.hstack([cracks, net]), y, names, monotone=True)
    coef = np.asarray(model.coef)
    j = names.index("net_p_intact")
    assert coef[INTACT, j] >= max(coef[MILD, j], coef[BROKEN, j]) - 1e-9
