"""fracscope.report.stats against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fracscope.report.stats import (
    bootstrap_fraction_ci,
    class_fractions_by_size,
    compare_groups,
    mean_radial_profile,
    porosity_summary,
    wilson_interval,
)

Z95 = 1.959963984540054  # normal 97.5 % quantile


def _wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    a = 2 * n * p + z * z
    b = z * math.sqrt(z * z + 4 * n * p * (1 - p))
    c = 2 * (n + z * z)
    return (a - b) / c, (a + b) / c


@pytest.mark.parametrize("k,n", [(3, 10), (0, 10), (10, 10), (759, 1000), (1, 2)])
def test_wilson_matches_formula(k, n):
    low, high = wilson_interval(k, n)
    exp_low, exp_high = _wilson_by_hand(k, n)
    assert low == pytest.approx(exp_low, abs=1e-12)
    assert high == pytest.approx(exp_high, abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_known_values():
    # 3/10: the textbook Wilson interval is 0.1078 .. 0.6032.
    low, high = wilson_interval(3, 10)
    assert (round(low, 4), round(high, 4)) == (0.1078, 0.6032)
    # k = 0 gives a zero lower bound and a non-zero upper bound (z²/(n+z²)).
    low0, high0 = wilson_interval(0, 10)
    assert low0 == 0.0
    assert high0 == pytest.approx(Z95**2 / (10 + Z95**2))


def test_wilson_n_zero_and_confidence():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    w90 = wilson_interval(3, 10, confidence=0.90)
    w95 = wilson_interval(3, 10)
    assert w90[0] > w95[0] and w90[1] < w95[1]
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_chi2_2x2_by_formula():
    table = np.array([[10, 20], [30, 40]])
    # expected = row sum × column sum / N = 12, 18, 28, 42; every (o - e)² is 4.
    chi2 = 4 / 12 + 4 / 18 + 4 / 28 + 4 / 42
    res = compare_groups(table)
    assert res.test_name == "chi2"
    assert res.dof == 1
    assert res.statistic == pytest.approx(chi2, rel=1e-12)
    # For 1 dof the chi-square survival function is erfc(sqrt(x / 2)).
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-9)
    assert res.min_expected == pytest.approx(12.0)


def test_chi2_2x3_by_formula():
    table = np.array([[20, 15, 15], [10, 20, 20]])
    # expected 15, 17.5, 17.5 in both rows.
    chi2 = 2 * (25 / 15 + 6.25 / 17.5 + 6.25 / 17.5)
    res = compare_groups(table)
    assert res.test_name == "chi2" and res.dof == 2
    assert res.statistic == pytest.approx(chi2, rel=1e-12)
    # For 2 dof the survival function is exp(-x / 2).
    assert res.p_value == pytest.approx(math.exp(-chi2 / 2), rel=1e-9)


def test_fisher_2x2_small_counts():
    # Fisher's tea-tasting table: two-sided p = (16 + 1 + 16 + 1) / 70, odds ratio 9.
    res = compare_groups(np.array([[3, 1], [1, 3]]))
    assert res.test_name == "fisher_exact"
    assert res.p_value == pytest.approx(34 / 70, rel=1e-9)
    assert res.statistic == pytest.approx(9.0)
    assert res.min_expected == pytest.approx(2.0)


def test_fisher_drops_empty_class_to_2x2():
    # No broken particle anywhere: the table reduces to 2×2 and Fisher is exact.
    res = compare_groups(np.array([[3, 1, 0], [1, 3, 0]]))
    assert res.test_name == "fisher_exact"
    assert res.p_value == pytest.approx(34 / 70, rel=1e-9)


def test_fisher_rxc_monte_carlo_is_seeded():
    table = np.array([[3, 1, 0], [0, 2, 4]])
    a = compare_groups(table, seed=1)
    b = compare_groups(table, seed=1)
    assert a.test_name == "fisher_exact_mc" and a.n_resamples > 0
    assert a.p_value == b.p_value
    # Exact Freeman-Halton p for this table is about 0.033; MC error < 0.006.
    assert 0.02 < a.p_value < 0.05


def test_compare_groups_degenerate():
    assert compare_groups(np.array([[5, 3, 1]])).test_name == "none"
    assert compare_groups(np.array([[5, 0, 0], [7, 0, 0]])).test_name == "none"
    assert math.isnan(compare_groups(np.zeros((2, 3), int)).p_value)


def _fake_counts(n_images: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.dirichlet([20, 10, 5], size=n_images)  # image-to-image variation
    return np.stack([rng.multinomial(30, pi) for pi in p])


def test_bootstrap_contains_estimate_and_shrinks():
    rng = np.random.default_rng(3)
    few = _fake_counts(8, rng)
    many = _fake_counts(200, rng)
    for counts in (few, many):
        low, high = bootstrap_fraction_ci(counts, n_boot=1000, seed=0)
        est = counts.sum(axis=0) / counts.sum()
        assert np.all(low <= est) and np.all(est <= high)
        assert np.all(low >= 0) and np.all(high <= 1)
    w_few = np.subtract(*bootstrap_fraction_ci(few, n_boot=1000)[::-1])
    w_many = np.subtract(*bootstrap_fraction_ci(many, n_boot=1000)[::-1])
    assert np.all(w_many < w_few)


def test_bootstrap_deterministic_and_degenerate():
    counts = _fake_counts(20, np.random.default_rng(0))
    a = bootstrap_fraction_ci(counts, n_boot=500, seed=7)
    b = bootstrap_fraction_ci(counts, n_boot=500, seed=7)
    c = bootstrap_fraction_ci(counts, n_boot=500, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # One image: no between-image variation, the interval is the point estimate.
    one = np.array([[6, 3, 1]])
    low, high = bootstrap_fraction_ci(one, n_boot=50)
    np.testing.assert_allclose(low, [0.6, 0.3, 0.1])
    np.testing.assert_allclose(high, [0.6, 0.3, 0.1])
    # Nothing counted: uninformative interval.
    low, high = bootstrap_fraction_ci(np.zeros((3, 3)), n_boot=50)
    np.testing.assert_array_equal(low, 0.0)
    np.testing.assert_array_equal(high, 1.0)


def test_bootstrap_resamples_images_not_particles():
    # Two images, each all one class: resampling images gives fractions 0, 0.5 or 1
    # for class 0, so the 95 % interval spans 0..1; particle resampling would not.
    counts = np.array([[100, 0, 0], [0, 100, 0]])
    low, high = bootstrap_fraction_ci(counts, n_boot=400)
    assert low[0] == 0.0 and high[0] == 1.0


def test_class_fractions_by_size_by_hand():
    d = np.array([4.0, 6.0, 7.5, 9.9, 10.0, 12.0, 30.0, np.nan])
    cls = np.array(["intact", "intact", "broken", "mildly_damaged", "broken", "broken", "intact", "intact"])
    table = class_fractions_by_size(d, cls, np.array([5.0, 10.0, 15.0]))
    # [5, 10): 6.0 intact, 7.5 broken, 9.9 mildly; [10, 15): 10.0 and 12.0 broken.
    np.testing.assert_array_equal(table.counts, [[1, 1, 1], [0, 0, 2]])
    np.testing.assert_array_equal(table.n, [3, 2])
    np.testing.assert_allclose(table.fractions[1], [0, 0, 1])
    rows = table.rows()
    assert rows[0]["bin_low_um"] == 5.0 and rows[0]["n_broken"] == 1
    assert rows[0]["pct_intact"] == pytest.approx(100 / 3)
    # Integer classes work the same.
    same = class_fractions_by_size(d[:3], np.array([0, 0, 2]), np.array([0.0, np.inf]))
    np.testing.assert_array_equal(same.counts, [[2, 0, 1]])
    with pytest.raises(ValueError):
        class_fractions_by_size(d[:1], np.array(["cracked"]), np.array([0.0, 1.0]))


def test_porosity_summary_and_profile():
    s = porosity_summary(np.array([8.0, 8.2, 8.4, np.nan]))
    assert s.n == 3
    assert s.mean == pytest.approx(8.2)
    assert s.sd == pytest.approx(0.2)  # sqrt(((-0.2)² + 0 + 0.2²) / 2)
    one = porosity_summary(np.array([5.0]))
    assert one.mean == 5.0 and math.isnan(one.sd)
    assert porosity_summary(np.array([])).n == 0

    prof = mean_radial_profile(np.array([[13.0, 8.0], [11.0, 8.0], [np.nan, 9.5]]), (0.5, 1.0))
    assert prof.fractions == (0.5, 1.0)
    assert prof.mean_pct[0] == pytest.approx(12.0)
    assert prof.n == (2, 3)
    assert prof.sd_pct[0] == pytest.approx(math.sqrt(2.0))
    assert prof.mean_pct[1] == pytest.approx(8.5)
