"""A lab's class rule from its labels (`fracscope.calibrate`): it recovers a shifted boundary, the written phase
model file carries it into `infer`, and bad input is one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fracscope.assets import resolve_phase_model
from fracscope.calibrate import evidence, main, run
from fracscope.classify import SECTION_FEATURES, CrackClassifier, class_rule_from_dict, damage_evidence_sign
from fracscope.model_file import PhaseMetadata, read_metadata
from fracscope.scores import ClassScores
from fracscope.types import CLASS_NAMES

INTACT, MILD, BROKEN = range(3)
LAB_MIN_LONGEST = 0.5  # the constructed lab calls a section mildly damaged only from a crack this long (/ diameter)


def _shipped() -> CrackClassifier:
    rule = class_rule_from_dict(read_metadata(resolve_phase_model(None), PhaseMetadata).class_rule)
    assert isinstance(rule, CrackClassifier)
    return rule


def assert_monotone(rule: CrackClassifier) -> None:
    """More damage evidence never makes intact more likely against either damaged class."""
    coef = np.asarray(rule.coef)
    for j, name in enumerate(rule.features):
        sign = damage_evidence_sign(name)
        for damaged in (MILD, BROKEN):
            assert sign * (coef[damaged, j] - coef[INTACT, j]) >= -1e-9, (name, CLASS_NAMES[damaged], coef[:, j])


def test_the_shipped_rule_is_monotone():
    assert_monotone(_shipped())


def constructed_table(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """particles.csv rows of sections with one crack of drawn length, and the class a lab with a stricter
    intact/mild line gives them: broken when split, mildly damaged when the longest crack is at least
    `LAB_MIN_LONGEST` of the diameter, intact otherwise. The section net's probabilities follow the crack length."""
    rng = np.random.default_rng(seed)
    longest = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.02, 1.2, n))
    splits = (longest > 0.8) & (rng.random(n) < 0.5)
    diameter = rng.uniform(5, 12, n)
    has = longest > 0
    p_damaged = 1 / (1 + np.exp(-(longest - 0.15) * 12))
    net_broken = np.where(splits, 0.6, 0.05) * p_damaged
    table = pd.DataFrame({
        "image": [f"lab/field{i % 10}.tif" for i in range(n)], "page": 0, "particle_id": np.arange(n) // 10 + 1,
        "eq_diameter_um": diameter, "crack_pct": 2.5 * longest, "crack_length_um": 1.3 * longest * diameter,
        "crack_reach_frac": np.minimum(1.0, 1.5 * longest),
        "crack_reaches_surface": (has & (rng.random(n) < 0.5)) * 1.0,
        "crack_splits_section": splits * 1.0, "crack_splits_bridged": splits * 1.0, "longest_crack_frac": longest,
        "n_cracks": has * rng.integers(1, 3, n) * 1.0,
        "net_p_intact": 1 - p_damaged, "net_p_mildly_damaged": p_damaged - net_broken, "net_p_broken": net_broken,
    })
    label = np.where(splits, BROKEN, np.where(longest >= LAB_MIN_LONGEST, MILD, INTACT))
    return table, label


def _write_labels(path, table: pd.DataFrame, label: np.ndarray) -> None:
    classes = [CLASS_NAMES[c] for c in label]
    table[["image", "page", "particle_id"]].assign(**{"class": classes}).to_csv(path, index=False)


@pytest.mark.parametrize("strength", ["auto", None, 1.0])  # chosen by cross-validation, plain, towards the shipped
def test_calibration_recovers_a_shifted_intact_mild_boundary(tmp_path, strength):
    table, label = constructed_table(600, seed=1)
    table.to_csv(tmp_path / "particles.csv", index=False)
    fit = slice(0, 100)  # 100 labels; scored on the other 500 sections
    _write_labels(tmp_path / "labels.csv", table.iloc[fit], label[fit])
    result = run(tmp_path / "particles.csv", tmp_path / "labels.csv", tmp_path / "lab.onnx", strength=strength)

    x, held = evidence(table, result.rule.features), slice(100, None)
    before = ClassScores.from_labels(label[held], _shipped().predict_proba(x[held]).argmax(1)).kappa
    after = ClassScores.from_labels(label[held], result.rule.predict_proba(x[held]).argmax(1)).kappa
    assert after > before + 0.15 and after > 0.85, (before, after)
    # The lab's line: a 0.3-diameter crack is intact for it, a 0.7 one mildly damaged.
    longest = table["longest_crack_frac"]
    short, long_ = (np.flatnonzero((longest > a) & (longest < b) & (label != BROKEN))
                    for a, b in ((0.25, 0.35), (0.65, 0.75)))
    assert (result.rule.predict_proba(x[short]).argmax(1) == INTACT).mean() > 0.8
    assert (result.rule.predict_proba(x[long_]).argmax(1) == MILD).mean() > 0.8
    assert result.n_per_class == tuple(np.bincount(label[fit], minlength=3))
    assert result.kappa_cv > result.kappa_shipped
    assert_monotone(result.rule)
    assert result.strength == strength or strength == "auto"


def test_the_prior_keeps_the_shipped_rule_where_labels_are_few(tmp_path):
    """With an infinite pull the coefficients stay the shipped ones (only the intercepts move)."""
    table, label = constructed_table(200, seed=2)
    x = evidence(table, _shipped().features)
    rule = CrackClassifier.fit(x[:30], label[:30], _shipped().features, l2=1e6, prior=_shipped())
    np.testing.assert_allclose(rule.coef, _shipped().coef, atol=1e-3)
    assert rule.mean == _shipped().mean and rule.scale == _shipped().scale


def test_the_written_file_carries_the_rule_into_infer(tmp_path):
    """particles.csv holds every input of the rule (the shipped p_* are recomputed from its columns); the
    calibrated file's rule is the one a new run applies."""
    from fracscope.cli import compose
    from fracscope.io import write_image_tiff
    from fracscope.pipeline import run as infer
    from fracscope.synth import load_config, make_field

    cfg = load_config("p", overrides=["electrode.field_px=[384,512]"])
    fields = tmp_path / "fields"
    fields.mkdir()
    for i in range(2):
        item = make_field(cfg, 7, i)
        write_image_tiff(fields / f"f{i}.tif", item.image.pixels, item.image.pixel_size_um)
    quiet = ["report.write_overlays=false", "report.write_review=false", "report.write_plots=false", "progress=false"]
    infer(compose("infer", f"input={fields}", f"output={tmp_path / 'run1'}", *quiet))
    first = pd.read_csv(tmp_path / "run1" / "particles.csv")
    assert len(first) >= 9 and first[list(SECTION_FEATURES)].notna().all().all()
    probs = [f"p_{c}" for c in CLASS_NAMES]
    np.testing.assert_allclose(_shipped().predict_proba(evidence(first, _shipped().features)), first[probs], atol=1e-9)

    # A lab whose classes follow the particle id, nothing the shipped rule knows: the new rule must differ.
    _write_labels(tmp_path / "labels.csv", first, first["particle_id"].to_numpy() % 3)
    new = tmp_path / "models" / "lab_phases.onnx"
    assert main([str(tmp_path / "run1"), str(tmp_path / "labels.csv"), str(new)]) == 0
    stored = read_metadata(new, PhaseMetadata).class_rule
    rule = class_rule_from_dict(stored)
    assert stored["kind"] == "logistic" and rule.coef != _shipped().coef
    # Everything but the class rule is the shipped file's.
    shipped_meta = read_metadata(resolve_phase_model(None), PhaseMetadata)
    assert {k: v for k, v in vars(read_metadata(new, PhaseMetadata)).items() if k != "class_rule"} == \
        {k: v for k, v in vars(shipped_meta).items() if k != "class_rule"}

    infer(compose("infer", f"input={fields}", f"output={tmp_path / 'run2'}", f"phase_model_path={new}", *quiet))
    second = pd.read_csv(tmp_path / "run2" / "particles.csv")
    assert len(second) == len(first)
    np.testing.assert_allclose(rule.predict_proba(evidence(second, rule.features)), second[probs], atol=1e-9)
    assert not np.allclose(second[probs], first[probs], atol=1e-3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lab: lab.assign(particle_id=lab["particle_id"] + 1000),
         "labelled particle(s) are not in particles.csv"),
        (lambda lab: lab.assign(**{"class": ["cracked"] + list(lab["class"][1:])}),
         "unknown class name(s) 'cracked'"),
        (lambda lab: pd.concat([lab[lab["class"] != "broken"].head(40), lab[lab["class"] == "broken"].head(2)]),
         "too few labels: each class needs at least 3"),
        (lambda lab: lab.drop(columns="particle_id"), "lacks the column(s) particle_id"),
        (lambda lab: pd.concat([lab, lab.head(1)]), "is labelled twice"),
    ],
)
def test_bad_labels_are_one_line(tmp_path, capsys, edit, message):
    table, label = constructed_table(100, seed=3)
    table.to_csv(tmp_path / "particles.csv", index=False)
    _write_labels(tmp_path / "labels.csv", table, label)
    edit(pd.read_csv(tmp_path / "labels.csv")).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "particles.csv"), str(tmp_path / "labels.csv"), str(tmp_path / "lab.onnx")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fracscope-calibrate: error: ") and message in err, err
    assert not (tmp_path / "lab.onnx").exists()


def test_a_bad_prior_strength_is_one_line(tmp_path, capsys):
    table, label = constructed_table(60, seed=4)
    table.to_csv(tmp_path / "particles.csv", index=False)
    _write_labels(tmp_path / "labels.csv", table, label)
    for bad in ("strong", "-1"):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "particles.csv"), str(tmp_path / "labels.csv"), str(tmp_path / "lab.onnx"),
                  f"--prior-strength={bad}"])
        err = capsys.readouterr().err
        assert "--prior-strength must be auto or a number >= 0" in err and len(err.strip().splitlines()) == 1


def test_a_table_without_the_section_net_probabilities_is_one_line(tmp_path, capsys):
    table, label = constructed_table(60, seed=4)
    table.drop(columns=list(SECTION_FEATURES)).to_csv(tmp_path / "particles.csv", index=False)
    _write_labels(tmp_path / "labels.csv", table, label)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "particles.csv"), str(tmp_path / "labels.csv"), str(tmp_path / "lab.onnx")])
    err = capsys.readouterr().err
    assert "net_p_intact" in err and "rerun infer" in err and len(err.strip().splitlines()) == 1
