"""Statistics for class fractions and porosity: pure functions over numpy arrays.

Class fractions get two 95 % intervals: Wilson's score interval (treats particles
as independent draws) and a bootstrap over images (particles of one image share a
sample, a preparation and a field of view, so they are not independent; resampling
whole images keeps that clustering). Groups are compared with a chi-square test of
independence, or Fisher's exact test when expected counts are small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from fracscope.types import CLASS_NAMES

#: Expected counts below this make the chi-square approximation unreliable.
MIN_EXPECTED = 5.0
#: Monte Carlo samples for the r×c Fisher (Freeman-Halton) test.
FISHER_MC_RESAMPLES = 9999


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(st.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Parameters
    ----------
    k : int
        Successes (particles of the class), 0 <= k <= n.
    n : int
        Trials (particles counted).
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    (low, high) : tuple of float
        Bounds as fractions in [0, 1]. For n = 0 nothing is known and the interval is
        (0.0, 1.0).

    Notes
    -----
    With p = k/n and z the normal quantile,
    centre = (p + z²/2n) / (1 + z²/n) and
    half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate
    at k = 0 or k = n.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    # Exact ends at k = 0 and k = n (the formula hits them up to rounding).
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def bootstrap_fraction_ci(
    counts_per_image: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of pooled class fractions, resampling images.

    Parameters
    ----------
    counts_per_image : ndarray of int, shape (n_images, n_classes)
        Particles of each class in each image.
    n_boot : int
        Bootstrap replicates.
    seed : int
        Seed of the generator; the same inputs and seed give the same interval.
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    (low, high) : tuple of ndarray, shape (n_classes,)
        Bounds of the pooled fraction (sum of class counts over sum of all counts in a
        resampled set of images), as fractions. Replicates that draw only empty
        images are skipped. With no particle at all the interval is (0, 1); with one
        image it collapses to the point estimate (there is no between-image
        variation to resample).
    """
    counts = np.asarray(counts_per_image, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts_per_image must be 2-D, got shape {counts.shape}")
    n_images, n_classes = counts.shape
    if n_images == 0 or counts.sum() == 0:
        return np.zeros(n_classes), np.ones(n_classes)
    rng = np.random.default_rng(seed)
    fractions = np.empty((n_boot, n_classes))
    # Multinomial image weights are the same draw as sampling images with
    # replacement; chunking keeps memory at chunk × n_images.
    chunk = max(1, min(n_boot, 2_000_000 // max(n_images, 1)))
    p_uniform = np.full(n_images, 1.0 / n_images)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        weights = rng.multinomial(n_images, p_uniform, size=stop - start).astype(np.float64)
        pooled = weights @ counts
        total = pooled.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            fractions[start:stop] = pooled / total
    alpha = (1.0 - confidence) / 2.0
    low = np.nanquantile(fractions, alpha, axis=0)
    high = np.nanquantile(fractions, 1.0 - alpha, axis=0)
    return low, high


@dataclass(frozen=True)
class TestResult:
    """Outcome of a test of independence between groups and classes.

    test_name : "chi2" (Pearson, no continuity correction), "fisher_exact" (2×2),
        "fisher_exact_mc" (r×c Freeman-Halton, Monte Carlo p) or "none" (fewer than
        two groups or classes hold particles).
    statistic : chi-square statistic for "chi2"; the sample odds ratio for
        "fisher_exact"; the probability of the observed table under the null for
        "fisher_exact_mc"; NaN for "none".
    dof : degrees of freedom of the (reduced) table, (r - 1)(c - 1).
    p_value : two-sided p-value (NaN for "none").
    min_expected : smallest expected count under independence.
    chi2_statistic, chi2_p_value : the chi-square test, reported even when Fisher
        replaces it.
    n_resamples : Monte Carlo samples behind p_value (0 when exact or asymptotic).
    """

    __test__ = False  # not a pytest test class

    test_name: str
    statistic: float
    dof: int
    p_value: float
    min_expected: float = float("nan")
    chi2_statistic: float = float("nan")
    chi2_p_value: float = float("nan")
    n_resamples: int = 0

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def compare_groups(table: np.ndarray, seed: int = 0) -> TestResult:
    """Test whether class fractions differ between groups.

    Parameters
    ----------
    table : ndarray of int, shape (n_groups, n_classes)
        Particle counts.
    seed : int
        Seed of the Monte Carlo r×c Fisher test (the only random part).

    Returns
    -------
    TestResult

    Notes
    -----
    Rows (groups) and columns (classes) that hold no particle are dropped first; they
    carry no information and would make expected counts zero. On the reduced table:

    * Pearson's chi-square test of independence (`scipy.stats.chi2_contingency`,
      without Yates' correction) when every expected count is >= 5;
    * otherwise Fisher's exact test: exact for a 2×2 table
      (`scipy.stats.fisher_exact`), and for larger tables the Freeman-Halton
      generalisation with a Monte Carlo p-value from 9999 random tables with the
      observed margins (`scipy.stats.random_table`), seeded, so the result is
      reproducible. Its Monte Carlo standard error is about sqrt(p(1-p)/9999)
      (< 0.005).
    """
    obs = np.asarray(table)
    if obs.ndim != 2:
        raise ValueError(f"table must be 2-D, got shape {obs.shape}")
    if np.any(obs < 0):
        raise ValueError("counts must be non-negative")
    obs = obs[obs.sum(axis=1) > 0][:, obs.sum(axis=0) > 0].astype(np.int64)
    nan = float("nan")
    if obs.shape[0] < 2 or obs.shape[1] < 2:
        return TestResult("none", nan, 0, nan)
    chi2, p_chi2, dof, expected = st.chi2_contingency(obs, correction=False)
    min_exp = float(expected.min())
    common = dict(min_expected=min_exp, chi2_statistic=float(chi2), chi2_p_value=float(p_chi2))
    if min_exp >= MIN_EXPECTED:
        return TestResult("chi2", float(chi2), int(dof), float(p_chi2), **common)
    if obs.shape == (2, 2):
        res = st.fisher_exact(obs)
        return TestResult("fisher_exact", float(res.statistic), int(dof), float(res.pvalue), **common)
    method = st.MonteCarloMethod(n_resamples=FISHER_MC_RESAMPLES, rng=np.random.default_rng(seed))
    res = st.fisher_exact(obs, method=method)
    return TestResult(
        "fisher_exact_mc",
        float(res.statistic),
        int(dof),
        float(res.pvalue),
        n_resamples=FISHER_MC_RESAMPLES,
        **common,
    )


def class_indices(classes: np.ndarray) -> np.ndarray:
    """Class names or indices as int indices into CLASS_NAMES.

    Raises
    ------
    ValueError
        For a name that is not a class, or an index out of range.
    """
    arr = np.asarray(classes)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind in "iu":
        idx = arr.astype(np.int64)
    else:
        lookup = {name: i for i, name in enumerate(CLASS_NAMES)}
        try:
            idx = np.array([lookup[str(c)] for c in arr.ravel()], dtype=np.int64).reshape(arr.shape)
        except KeyError as err:
            raise ValueError(f"unknown class {err.args[0]!r}; expected one of {CLASS_NAMES}") from None
    if np.any((idx < 0) | (idx >= len(CLASS_NAMES))):
        raise ValueError(f"class index out of range 0..{len(CLASS_NAMES) - 1}")
    return idx


@dataclass(frozen=True)
class SizeBinTable:
    """Class counts and fractions per equivalent-diameter bin.

    edges_um : bin edges in µm, length n_bins + 1; bin i is [edges[i], edges[i+1]).
    counts : int array (n_bins, n_classes).
    """

    edges_um: tuple[float, ...]
    counts: np.ndarray

    @property
    def n(self) -> np.ndarray:
        """Particles per bin."""
        return self.counts.sum(axis=1)

    @property
    def fractions(self) -> np.ndarray:
        """Class fractions per bin (rows sum to 1; NaN for an empty bin)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.counts / self.n[:, None]

    def rows(self) -> list[dict]:
        """One dict per bin: bin_low_um, bin_high_um, n, n_<class>, pct_<class>."""
        out = []
        frac = self.fractions
        for i in range(self.counts.shape[0]):
            row: dict = {"bin_low_um": self.edges_um[i], "bin_high_um": self.edges_um[i + 1], "n": int(self.n[i])}
            for j, name in enumerate(CLASS_NAMES):
                row[f"n_{name}"] = int(self.counts[i, j])
            for j, name in enumerate(CLASS_NAMES):
                row[f"pct_{name}"] = float(100.0 * frac[i, j])
            out.append(row)
        return out


def class_fractions_by_size(
    eq_diameters_um: np.ndarray, classes: np.ndarray, bins_um: np.ndarray
) -> SizeBinTable:
    """Class counts and fractions per size bin.

    Parameters
    ----------
    eq_diameters_um : ndarray of float, shape (n,)
        Equivalent-circle diameters in µm.
    classes : ndarray, shape (n,)
        Class names (CLASS_NAMES) or class indices.
    bins_um : ndarray of float
        Increasing bin edges in µm; the last may be inf. Bins are half-open
        [low, high); particles outside all bins or with NaN diameter are not counted.

    Returns
    -------
    SizeBinTable
    """
    d = np.asarray(eq_diameters_um, dtype=np.float64).ravel()
    idx = class_indices(classes).ravel()
    edges = np.asarray(bins_um, dtype=np.float64).ravel()
    if d.shape != idx.shape:
        raise ValueError(f"{d.size} diameters but {idx.size} classes")
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins_um must be >= 2 increasing edges, got {bins_um}")
    n_bins = edges.size - 1
    b = np.searchsorted(edges, d, side="right") - 1
    keep = np.isfinite(d) & (b >= 0) & (b < n_bins)
    counts = np.zeros((n_bins, len(CLASS_NAMES)), dtype=np.int64)
    np.add.at(counts, (b[keep], idx[keep]), 1)
    return SizeBinTable(tuple(float(e) for e in edges), counts)


@dataclass(frozen=True)
class PorositySummary:
    """Mean, sample SD (ddof = 1; NaN when n < 2) and count of non-NaN values."""

    mean: float
    sd: float
    n: int


def porosity_summary(values: np.ndarray) -> PorositySummary:
    """Mean ± SD of per-section porosity values, NaN ignored.

    Parameters
    ----------
    values : ndarray of float
        Porosity in percent, one per particle section.

    Returns
    -------
    PorositySummary
        The SD is the sample SD (ddof = 1), the spread of sections, as in the seed
        paper's "8.19 % ± 0.19 %" style; NaN mean for n = 0 and NaN SD for n < 2.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n >= 2 else float("nan")
    return PorositySummary(mean, sd, n)


@dataclass(frozen=True)
class ProfileSummary:
    """Mean radial porosity profile over sections.

    fractions : radii as fractions of R (e.g. 0.5 … 1.0).
    mean_pct, sd_pct : per fraction, over sections (sample SD; NaN when n < 2).
    n : sections with a finite value, per fraction.
    """

    fractions: tuple[float, ...]
    mean_pct: tuple[float, ...]
    sd_pct: tuple[float, ...]
    n: tuple[int, ...]


def mean_radial_profile(profiles_pct: np.ndarray, fractions: tuple[float, ...]) -> ProfileSummary:
    """Mean ± SD of per-section radial porosity profiles.

    Parameters
    ----------
    profiles_pct : ndarray of float, shape (n_sections, n_fractions)
        Porosity inside the circle of radius f·R for each fraction f (the
        porosity_r50_pct … porosity_r100_pct columns).
    fractions : tuple of float
        The fractions, in column order.

    Returns
    -------
    ProfileSummary
        Column-wise `porosity_summary`, NaN ignored per column.
    """
    arr = np.asarray(profiles_pct, dtype=np.float64).reshape(-1, len(fractions))
    cols = [porosity_summary(arr[:, j]) for j in range(arr.shape[1])]
    return ProfileSummary(
        tuple(float(f) for f in fractions),
        tuple(c.mean for c in cols),
        tuple(c.sd for c in cols),
        tuple(c.n for c in cols),
    )
