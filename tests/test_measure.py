"""Exact answers of the measurement core on drawn shapes."""

import math

import numpy as np
import pytest

from fracscope.measure import (
    count_fragments,
    crack_length_um,
    crack_pct,
    eq_diameter_um,
    measure_particle,
    porosity_pct,
    radial_profile,
)
from fracscope.types import Phase

from scenes import disc


def test_porosity_counts_pores_over_the_filled_mask():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True  # 100 px
    phases = np.where(mask, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    phases[6:8, 6:9] = Phase.PORE  # 6 pore px
    phases[10, 5:15] = Phase.CRACK  # 10 crack px: not pores
    phases[0:3, 0:3] = Phase.PORE  # outside the mask: ignored
    assert porosity_pct(phases, mask) == pytest.approx(6.0)
    assert crack_pct(phases, mask) == pytest.approx(10.0)


def test_porosity_of_empty_mask_is_nan_and_shape_mismatch_raises():
    assert math.isnan(porosity_pct(np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool)))
    with pytest.raises(ValueError, match="shape"):
        porosity_pct(np.zeros((4, 5), np.uint8), np.zeros((4, 4), bool))


def test_radial_profile_of_disc_with_pore_core():
    shape, c, radius = (201, 201), (100, 100), 80
    mask = disc(shape, c, radius)
    phases = np.where(mask, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    core = disc(shape, c, 30)
    phases[core] = Phase.PORE
    prof = radial_profile(phases, mask)
    R = math.sqrt(mask.sum() / math.pi)
    assert prof.radius_px == pytest.approx(R)
    assert prof.centroid_rc == pytest.approx((100.0, 100.0))
    rr, cc = np.nonzero(mask)
    d = np.hypot(rr - 100, cc - 100)
    for f, got in zip(prof.fractions, prof.circle_pct):
        inside = d <= f * R
        want = 100.0 * np.count_nonzero(core[rr, cc] & inside) / inside.sum()
        assert got == pytest.approx(want)
    # the core pores sit inside r = 30 < 0.5 R: every ring outside is pore-free
    assert prof.annulus_pct[1:] == pytest.approx((0.0,) * 5)
    assert prof.circle_pct[0] > prof.circle_pct[-1]
    # the 100 % circle covers (almost) the whole disc, so it matches whole-section porosity
    assert prof.circle_pct[-1] == pytest.approx(porosity_pct(phases, mask), abs=0.2)


def test_radial_profile_flat_for_uniform_pores():
    shape = (300, 300)
    mask = disc(shape, (150, 150), 120)
    phases = np.where(mask, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    grid = np.zeros(shape, bool)
    grid[::5, ::5] = True  # 1 pore px in 25: 4 %
    phases[mask & grid] = Phase.PORE
    prof = radial_profile(phases, mask)
    assert np.ptp(prof.circle_pct) < 0.5
    assert prof.circle_pct[-1] == pytest.approx(4.0, abs=0.3)


def test_profile_columns_are_named_in_percent():
    mask = disc((50, 50), (25, 25), 20)
    cols = radial_profile(mask.astype(np.uint8), mask).columns()
    assert list(cols)[:6] == [f"porosity_r{p}_pct" for p in (50, 60, 70, 80, 90, 100)]
    assert "porosity_ring0_50_pct" in cols and "porosity_ring90_100_pct" in cols


def test_fragments_and_crack_length_of_a_split_square():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    crack = np.zeros_like(mask)
    crack[5:25, 15] = True  # a vertical crack across the whole section
    assert count_fragments(mask, crack) == 2
    half = np.zeros_like(mask)
    half[5:15, 15] = True  # stops half way: still one body
    assert count_fragments(mask, half) == 1
    assert count_fragments(mask, np.zeros_like(mask)) == 1
    assert count_fragments(np.zeros_like(mask), crack) == 0
    # 20 pixels in a straight line: 19 pixel steps of 0.05 µm
    assert crack_length_um(crack, 0.05) == pytest.approx(19 * 0.05)
    diag = np.eye(10, dtype=bool)
    assert crack_length_um(diag, 1.0) == pytest.approx(9 * math.sqrt(2))


def test_diagonal_one_pixel_crack_separates_with_4_connectivity():
    mask = np.ones((10, 10), bool)
    crack = np.eye(10, dtype=bool)
    assert count_fragments(mask, crack) == 2


def test_measure_particle_units():
    mask = np.zeros((40, 40), bool)
    mask[0:20, 0:20] = True  # 400 px
    phases = mask.astype(np.uint8)
    phases[0:2, 0:10] = Phase.PORE  # 20 px = 5 %
    m = measure_particle(mask, phases, pixel_size_um=0.1)
    assert m["area_um2"] == pytest.approx(4.0)
    assert m["eq_diameter_um"] == pytest.approx(2 * math.sqrt(4.0 / math.pi))
    assert m["porosity_pct"] == pytest.approx(5.0)
    assert m["crack_pct"] == 0.0 and m["crack_length_um"] == 0.0 and m["n_fragments"] == 1
    assert eq_diameter_um(mask, 0.1) == pytest.approx(m["eq_diameter_um"])
    px = measure_particle(mask, phases, pixel_size_um=None)
    assert px["area_um2"] == pytest.approx(400.0)


def test_threshold_phases_finds_dark_and_bright_pores():
    from fracscope.measure.threshold import threshold_phases

    mask = disc((60, 60), (30, 30), 25)
    img = np.where(mask, 200.0, 40.0)
    pores = mask & (np.add.outer(np.arange(60), np.arange(60)) % 7 == 0)
    dark = np.where(pores, 60.0, img)
    phases = threshold_phases(dark, mask, "dark")
    assert porosity_pct(phases, mask) == pytest.approx(100.0 * pores.sum() / mask.sum())
    bright = np.where(pores, 255.0, img)
    assert porosity_pct(threshold_phases(bright, mask, "bright"), mask) == pytest.approx(
        100.0 * pores.sum() / mask.sum()
    )
    assert (threshold_phases(dark, mask)[~mask] == 0).all()
    with pytest.raises(ValueError, match="polarity"):
        threshold_phases(dark, mask, "grey")


def test_global_image_threshold_is_the_papers_method_when_pores_are_few():
    from fracscope.measure.threshold import image_threshold, threshold_phases

    rng = np.random.default_rng(0)
    mask = disc((120, 120), (60, 60), 50)
    grains = (np.arange(120)[:, None] // 10 + np.arange(120)[None, :] // 10) % 2  # channelling contrast
    img = np.where(mask, 170.0 + 50.0 * grains, 40.0) + rng.normal(0, 5, mask.shape)
    pores = mask & (np.add.outer(np.arange(120), np.arange(120)) % 23 == 0) & (np.arange(120)[None, :] % 3 == 0)
    img[pores] = 50.0
    truth = 100.0 * pores.sum() / mask.sum()
    t = image_threshold(img, "dark")
    assert 50.0 < t < 150.0  # between the dark (matrix + pores) and the bright solid
    assert porosity_pct(threshold_phases(img, mask, "dark", t), mask) == pytest.approx(truth)
    # Otsu over the section alone splits the grains: far too many pores.
    assert porosity_pct(threshold_phases(img, mask, "dark"), mask) > truth + 10
    assert image_threshold(img, "bright") is None
