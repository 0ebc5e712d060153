"""Curtain streaks (`fracscope.curtains`): measured on drawn crack maps, found only where they line up."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import line

from fracscope.curtains import angle_between_deg, crack_lines, find_curtain_streaks, remove_curtain_streaks
from fracscope.phases import ImagePhaseCodes
from fracscope.types import Phase


def _four_particles(shape=(200, 200)) -> np.ndarray:
    """Four square sections, one per quadrant."""
    instances = np.zeros(shape, np.int32)
    h, w = shape
    for k, (r, c) in enumerate([(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)], start=1):
        instances[r + 5 : r + h // 2 - 5, c + 5 : c + w // 2 - 5] = k
    return instances


def _draw(crack: np.ndarray, r0: int, c0: int, r1: int, c1: int, width: int = 1) -> None:
    rr, cc = line(r0, c0, r1, c1)
    for d in range(width):
        crack[rr, np.clip(cc + d, 0, crack.shape[1] - 1)] = True


def _codes(crack: np.ndarray) -> ImagePhaseCodes:
    inside = np.where(crack, np.uint8(Phase.CRACK), np.uint8(Phase.SOLID))
    return ImagePhaseCodes(inside.copy(), inside)


def test_crack_lines_measures_a_vertical_and_a_diagonal_line():
    crack = np.zeros((100, 100), bool)
    _draw(crack, 10, 20, 49, 20, width=2)  # 40 px long, 2 px wide, vertical
    _draw(crack, 60, 40, 89, 69)  # diagonal, down and to the right
    lines = crack_lines(crack, np.ones(crack.shape, np.int32))
    assert lines.area_px.tolist() == [80.0, 30.0]
    assert lines.length_px[0] == pytest.approx(40.0, abs=0.5)
    assert lines.width_px[0] == pytest.approx(2.0, abs=0.1)
    assert lines.tilt_deg[0] == pytest.approx(0.0, abs=1e-6)
    assert abs(lines.tilt_deg[1]) == pytest.approx(45.0, abs=0.5)


def test_streaks_lined_up_across_particles_are_removed_and_an_oblique_crack_stays():
    instances = _four_particles()
    crack = np.zeros(instances.shape, bool)
    # Streaks tilted ~3 degrees from the columns, 2 px wide, in particles 1, 2 and 4.
    for r, c in ((10, 20), (10, 60), (10, 120), (110, 160)):
        _draw(crack, r, c, r + 75, c + 4, width=2)
    oblique = np.zeros_like(crack)
    _draw(oblique, 110, 30, 170, 80)  # a real crack at ~40 degrees in particle 3
    codes = _codes(crack | oblique)
    out, n = remove_curtain_streaks(codes, instances)
    assert n == 4
    left = out.inside == Phase.CRACK
    assert (left == oblique).all()  # every streak is solid now, the oblique crack whole
    assert (codes.inside == np.where(crack | oblique, Phase.CRACK, Phase.SOLID)).all()  # the input is not changed


def test_pieces_on_a_streaks_line_go_with_it_and_a_blob_beside_it_stays():
    instances = _four_particles()
    crack = np.zeros(instances.shape, bool)
    for r, c in ((10, 20), (10, 60), (10, 120), (110, 160)):
        _draw(crack, r, c, r + 60, c, width=2)
    crack[76:79, 20:22] = True  # a 6-px piece where the first streak broke off (rows 71-75 missing)
    crack[40:43, 26:28] = True  # a blob 6 px beside the same streak
    out, n = remove_curtain_streaks(_codes(crack), instances)
    left = out.inside == Phase.CRACK
    assert n == 5 and not left[76:79, 20:22].any()
    assert left.sum() == 6 and left[40:43, 26:28].all()


@pytest.mark.parametrize("particles", [1, 2])
def test_lines_in_fewer_than_three_particles_are_cracks(particles):
    instances = _four_particles()
    crack = np.zeros(instances.shape, bool)
    columns = {1: (15, 25, 35, 45), 2: (15, 35, 115, 135)}[particles]
    for c in columns:
        _draw(crack, 10, c, 85, c, width=2)
    direction, streak = find_curtain_streaks(crack_lines(crack, instances))
    assert direction is None and not streak.any()


@pytest.mark.parametrize(("tilt_deg", "found"), [(0, True), (-3, True), (90, True), (88, True), (45, False), (30, False)])
def test_parallel_lines_are_curtains_only_near_the_columns_or_rows(tilt_deg, found):
    """Lined-up lines along the columns (or the rows: an image turned by 90 degrees) are curtains;
    parallel lines at 30-45 degrees are not where milling puts them, and stay."""
    instances = _four_particles()
    crack = np.zeros(instances.shape, bool)
    dr, dc = np.cos(np.radians(tilt_deg)), np.sin(np.radians(tilt_deg))
    for r, c in ((48, 48), (48, 148), (148, 48), (148, 148)):  # one line through each particle's centre
        _draw(crack, round(r - 20 * dr), round(c - 20 * dc), round(r + 20 * dr), round(c + 20 * dc))
    direction, streak = find_curtain_streaks(crack_lines(crack, instances))
    assert (direction is not None) == found and streak.sum() == (4 if found else 0)
    if found:
        assert abs(angle_between_deg(direction, tilt_deg)) < 1.5  # a 40-px line drawn on the pixel grid


def test_radial_cracks_in_every_direction_are_not_curtains():
    instances = np.zeros((400, 400), np.int32)
    crack = np.zeros(instances.shape, bool)
    for k, (r, c) in enumerate([(100, 100), (100, 300), (300, 100), (300, 300)], start=1):
        yy, xx = np.mgrid[:400, :400]
        instances[(yy - r) ** 2 + (xx - c) ** 2 < 90**2] = k
        for angle in np.linspace(0, np.pi, 7, endpoint=False) + 0.2 * k:
            dr, dc = np.cos(angle), np.sin(angle)
            _draw(crack, int(r + 10 * dr), int(c + 10 * dc), int(r + 80 * dr), int(c + 80 * dc))
    _, n = remove_curtain_streaks(_codes(crack), instances)
    assert n == 0


class _DrawnPhaseModel:
    """Stands in for `PhaseMapModel`: returns drawn codes whatever the pixels."""

    working_pixel_size_um = 0.05
    metadata = type("Metadata", (), {"pixel_size_range_um": None})()

    def __init__(self, codes: ImagePhaseCodes):
        self.codes = codes

    def predict_codes(self, pixels, pixel_size_um):
        return self.codes


@pytest.mark.parametrize("remove", [True, False])
def test_predict_particles_removes_the_streaks_unless_told_not_to(remove):
    from fracscope.analysis import AnalysisSettings, Models, StageTimes, predict_particles
    from fracscope.locate import LocatedParticles
    from fracscope.report.tables import image_row
    from fracscope.types import ImageResult, SEMImage

    instances = _four_particles()
    crack = np.zeros(instances.shape, bool)
    for r, c in ((10, 20), (10, 60), (10, 120), (110, 160)):
        _draw(crack, r, c, r + 75, c + 2, width=2)
    image = SEMImage(np.zeros(instances.shape, np.uint8), 0.05, "override")
    located = LocatedParticles(image, instances, [], {})
    predicted = predict_particles(located, "s", "g", Models(phases=_DrawnPhaseModel(_codes(crack))),
                                  AnalysisSettings(remove_curtains=remove), StageTimes())
    assert predicted.curtain_streaks == (4 if remove else 0)
    assert (predicted.codes.inside == Phase.CRACK).any() == (not remove)
    row = image_row(ImageResult(image, "s", "g", instances, np.zeros_like(crack, np.uint8),
                                curtain_streaks=predicted.curtain_streaks))
    assert row["n_curtain_streaks"] == predicted.curtain_streaks
