"""Scale estimation (issue 21): an untagged image's pixel size estimated from the image itself."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fracscope.cli import compose
from fracscope.detect import ClassicalDetector
from fracscope.detect.learned import LearnedDetector
from fracscope.detect.scale import (
    REFERENCE_DIAMETER_UM,
    ScaleCandidate,
    estimate_pixel_size_um,
    fitted_circle_diameter_px,
    outline_circle_px,
    pick_estimate,
    summarise_objects,
)
from fracscope.locate import with_estimated_scale
from fracscope.pipeline import run
from fracscope.synth import load_config, make_field
from fracscope.types import SEMImage


def _field(pixel_size_um: float, side_px: int, seed: int = 11):
    cfg = load_config("gp", [f"electrode.pixel_size_um={pixel_size_um}", f"electrode.field_px=[{side_px},{side_px}]"])
    return make_field(cfg, seed, 0)


@pytest.fixture(scope="module")
def detector() -> LearnedDetector:
    return LearnedDetector(threads=1)


@pytest.mark.parametrize(("pixel_size_um", "side_px"), [(0.025, 1600), (0.07, 768), (0.15, 512)])
def test_estimate_is_within_15_percent_on_generated_fields(detector, pixel_size_um, side_px) -> None:
    item = _field(pixel_size_um, side_px)
    est = estimate_pixel_size_um(item.image.pixels, detector)
    assert est is not None
    assert est.pixel_size_um == pytest.approx(pixel_size_um, rel=0.15)
    assert 0 < est.score <= 1 and len(est.candidates) > 10


def _plateau(pixel_sizes, true_um: float, section_um: float) -> tuple[ScaleCandidate, ...]:
    """Candidates as the detector gives them near the truth: the same sections, µm size ∝ candidate."""
    return tuple(ScaleCandidate(c, 10, 0.95, section_um * c / true_um, 0.5) for c in pixel_sizes)


def test_the_crossing_is_interpolated_on_the_log_grid() -> None:
    grid = tuple(np.geomspace(0.02, 0.2, 11))
    est = pick_estimate(_plateau(grid, 0.05, REFERENCE_DIAMETER_UM * 0.9))
    # sections read 0.9 x the reference at the truth: the crossing is at 0.05 / 0.9, exactly (log-linear)
    assert est.pixel_size_um == pytest.approx(0.05 / 0.9, rel=1e-9) and est.score == 0.5


def test_of_two_crossings_the_more_plausible_wins() -> None:
    d = [5.0, 12.0, 6.0, 15.0]  # crosses the reference between 0.02-0.03 and again between 0.05-0.08
    pl = [0.1, 0.2, 0.05, 0.6]
    cands = tuple(ScaleCandidate(c, 5, 0.9, di, p) for c, di, p in zip((0.02, 0.03, 0.05, 0.08), d, pl))
    est = pick_estimate(cands)
    assert 0.05 < est.pixel_size_um < 0.08 and est.score == 0.6


def test_nothing_found_is_no_estimate_and_no_crossing_is_score_zero() -> None:
    assert pick_estimate(tuple(ScaleCandidate(c, 0, 0.0, 0.0, 0.0) for c in (0.01, 0.1))) is None
    small = pick_estimate((ScaleCandidate(0.1, 3, 0.9, REFERENCE_DIAMETER_UM / 2, 0.3),))
    assert small.score == 0.0 and small.pixel_size_um == pytest.approx(0.2)


def test_a_section_cut_by_the_window_is_sized_by_its_fitted_circle() -> None:
    yy, xx = np.mgrid[:200, :200]
    cut = np.hypot(yy - 15, xx - 100) <= 40  # a disc of diameter 80 px, most of its upper half cut off
    visible_d = 2 * np.sqrt(cut.sum() / np.pi)
    assert visible_d < 70
    assert fitted_circle_diameter_px(cut) == pytest.approx(80, rel=0.03)
    assert fitted_circle_diameter_px(np.zeros((50, 50), bool)) == 0.0


@pytest.mark.parametrize(("centre_rc", "visible_share"), [((-25, 100), 0.14), ((-10, -15), 0.09), ((100, 100), 1.0)])
def test_the_fitted_disc_is_the_drawn_one_however_little_the_window_shows(centre_rc, visible_share) -> None:
    yy, xx = np.mgrid[:200, :200]
    disc = np.hypot(yy - centre_rc[0], xx - centre_rc[1]) <= 40  # diameter 80 px
    assert disc.sum() / (np.pi * 40**2) == pytest.approx(visible_share, abs=0.01)  # a cap, a corner, whole
    assert fitted_circle_diameter_px(disc) == pytest.approx(80, rel=0.02)
    row, col, radius = outline_circle_px(disc)  # the start: the circle through the outline alone
    assert abs(row - centre_rc[0]) < 2.5 and abs(col - centre_rc[1]) < 2.5 and abs(radius - 40) < 3.0


def test_in_a_corner_the_area_fit_beats_the_outline_circle() -> None:
    yy, xx = np.mgrid[:200, :200]
    corner = np.hypot(yy + 15, xx + 15) <= 40  # 7 % of a disc of diameter 80 px in the window's corner
    outline_d = 2 * outline_circle_px(corner)[2]
    assert outline_d < 73  # a short pixelated arc: the algebraic circle is 10 % small
    assert fitted_circle_diameter_px(corner) == pytest.approx(80, rel=0.03)


def test_a_sliver_with_too_little_outline_has_no_circle() -> None:
    sliver = np.zeros((50, 50), bool)
    sliver[0, 20:25] = True  # 5 pixels along the window's edge: no outline away from it
    assert outline_circle_px(sliver) is None and fitted_circle_diameter_px(sliver) == 0.0


def test_one_blob_filling_the_window_says_nothing() -> None:
    d, a, s = np.array([8.0, 8.0, 3.0]), np.array([100.0, 100.0, 10.0]), np.full(3, 0.9)
    found = summarise_objects(0.05, d, a, s, 1000)
    assert found.n_objects == 3 and found.diameter_um == pytest.approx((1600 + 30) / 210)
    assert found.plausibility == pytest.approx(0.21 * 0.9)
    assert summarise_objects(0.05, np.array([20.0]), np.array([600.0]), np.array([0.99]), 1000).n_objects == 0


def test_a_fixed_fallback_or_a_known_size_is_not_estimated(detector) -> None:
    pixels = _field(0.07, 512).image.pixels
    assert LearnedDetector(threads=1, fallback_pixel_size_um=0.05).estimate_pixel_size_um(pixels) is None
    known = SEMImage(pixels, 0.07, "override")
    assert with_estimated_scale(known, detector) is known
    untagged = SEMImage(pixels, None)
    assert with_estimated_scale(untagged, ClassicalDetector()) is untagged  # the classical detector does not estimate
    estimated = with_estimated_scale(untagged, detector)
    assert estimated.pixel_size_um is None and estimated.pixel_size_source == "estimated"
    assert estimated.estimated_pixel_size_um == estimate_pixel_size_um(pixels, detector).pixel_size_um


def test_infer_on_an_untagged_png_reports_the_estimate_in_pixels(tmp_path) -> None:
    item = _field(0.08, 640, seed=12)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(item.image.pixels).save(folder / "untagged.png")
    out = tmp_path / "out"
    cfg = compose("infer", f"input={folder}", f"output={out}", "detect_workers=0", "progress=false",
                  "report.write_review=false", "report.write_plots=false", "report.n_boot=100")
    outcome = run(cfg)
    assert outcome.exit_code == 0 and outcome.n_particles > 10
    images = pd.read_csv(out / "images.csv")
    row = images.iloc[0]
    assert row["pixel_size_source"] == "estimated" and row["length_unit"] == "px"
    assert np.isnan(row["pixel_size_um"])
    assert row["pixel_size_estimate_um"] == pytest.approx(0.08, rel=0.15)
    particles = pd.read_csv(out / "particles.csv")
    assert (particles["length_unit"] == "px").all() and particles["pixel_size_source"].eq("estimated").all()
    # detection ran at the estimate: about as many sections as the generator drew (fines slivers aside)
    assert abs(len(particles) - int(item.instances.max())) <= 0.25 * int(item.instances.max())
