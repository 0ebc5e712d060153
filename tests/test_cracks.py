"""Exact crack measurements on drawn sections: a disc of radius 40 px with straight cracks."""

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from fracscope.measure import (
    MIN_FRAGMENT_FRACTION,
    count_fragments,
    crack_length_um,
    crack_measurements,
    crack_reach_frac,
    crack_reaches_surface,
    crack_skeleton_lengths_px,
    depth_px,
    measure_particle,
)
from fracscope.types import Phase

from scenes import disc

R = 40  # disc radius in px; the disc spans rows and columns 10 … 90
PX_UM = 0.05
CRACK_COLUMNS = (
    "crack_length_um",
    "n_fragments",
    "crack_reach_frac",
    "crack_reaches_surface",
    "crack_splits_section",
    "crack_splits_bridged",
    "longest_crack_frac",
    "n_cracks",
)


def _disc() -> np.ndarray:
    return disc((101, 101), (50, 50), R)


def _vertical(mask: np.ndarray, row0: int, row1: int, col: int = 50) -> np.ndarray:
    """Crack pixels in one column, rows row0 … row1 inclusive."""
    crack = np.zeros_like(mask)
    crack[row0 : row1 + 1, col] = True
    return crack


def _phases(mask: np.ndarray, crack: np.ndarray) -> np.ndarray:
    phases = np.where(mask, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    phases[crack & mask] = Phase.CRACK
    return phases


def test_radial_crack_from_the_surface_to_half_the_radius():
    mask = _disc()
    crack = _vertical(mask, 10, 30)  # from the outline pixel (row 10) R/2 = 20 px inwards
    m = crack_measurements(mask, crack, PX_UM)
    assert m["crack_reaches_surface"] == 1.0
    # Pixel discretisation: the deepest crack pixel and the centre are each known to within 1 px.
    assert m["crack_reach_frac"] == pytest.approx(0.5, abs=1.0 / R)
    assert m["crack_splits_section"] == 0.0 and m["n_fragments"] == 1.0
    assert m["crack_length_um"] == pytest.approx(R / 2 * PX_UM)  # 21 pixels in a line: 20 steps
    assert m["n_cracks"] == 1.0
    eq_diameter_px = 2 * math.sqrt(mask.sum() / math.pi)
    assert m["longest_crack_frac"] == pytest.approx(20 / eq_diameter_px)


def test_diameter_crack_splits_the_section_and_reaches_its_centre():
    mask = _disc()
    m = crack_measurements(mask, _vertical(mask, 10, 90), PX_UM)
    assert m["crack_splits_section"] == 1.0 and m["n_fragments"] == 2.0
    assert m["crack_reaches_surface"] == 1.0
    assert m["crack_reach_frac"] == 1.0  # the crack runs through the deepest pixel, (50, 50)
    assert m["crack_length_um"] == pytest.approx(2 * R * PX_UM)
    assert m["longest_crack_frac"] == pytest.approx(1.0, abs=1.0 / (2 * R))  # 80 px over an 80.0 px diameter


def test_a_gap_of_two_pixels_is_bridged_a_gap_of_eight_is_not():
    """A diameter crack with a gap: 2 px (0.1 µm, under BRIDGE_GAP_UM) still splits once bridged, 8 px
    (0.4 µm) does not; neither splits the section by itself."""
    mask = _disc()
    for gap_rows, bridged in (((49, 50), 1.0), ((46, 53), 0.0)):
        crack = _vertical(mask, 10, 90)
        crack[gap_rows[0] : gap_rows[1] + 1] = False
        m = crack_measurements(mask, crack, PX_UM)
        assert m["crack_splits_section"] == 0.0 and m["n_fragments"] == 1.0
        assert m["crack_splits_bridged"] == bridged, gap_rows
    whole = crack_measurements(mask, _vertical(mask, 10, 90), PX_UM)
    assert whole["crack_splits_bridged"] == 1.0  # a split section is split bridged too


def test_internal_crack_does_not_reach_the_surface():
    mask = _disc()
    crack = _vertical(mask, 55, 70)  # depth 35 … 20 px below the bottom outline, centre not reached
    m = crack_measurements(mask, crack, PX_UM)
    assert m["crack_reaches_surface"] == 0.0
    assert m["crack_reach_frac"] == pytest.approx(35 / R, abs=1.0 / R)
    assert m["crack_reach_frac"] < 1.0
    assert m["n_fragments"] == 1.0 and m["crack_splits_section"] == 0.0
    assert m["crack_length_um"] == pytest.approx(15 * PX_UM)


def test_surface_means_an_edge_neighbour_outside_not_a_diagonal_one():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    mask[5, 5] = False  # a notch: pixel (6, 6) touches the outside only diagonally
    crack = np.zeros_like(mask)
    crack[6, 6] = True
    assert not crack_reaches_surface(mask, crack)
    crack[6, 5] = True  # its left neighbour sits on the outline
    assert crack_reaches_surface(mask, crack)
    # The array edge is outside too.
    full = np.ones((8, 8), bool)
    edge = np.zeros_like(full)
    edge[0, 3] = True
    assert crack_reaches_surface(full, edge)
    assert crack_reach_frac(full, edge) == pytest.approx(1 / 4)  # depth 1 of an inscribed radius of 4


def test_no_crack_gives_zeros_and_one_fragment():
    mask = _disc()
    m = crack_measurements(mask, np.zeros_like(mask), PX_UM)
    assert list(m) == list(CRACK_COLUMNS)
    assert m == dict.fromkeys(CRACK_COLUMNS, 0.0) | {"n_fragments": 1.0}
    assert crack_reach_frac(mask, np.zeros_like(mask)) == 0.0
    assert not crack_reaches_surface(mask, np.zeros_like(mask))
    # An empty section: no crack, no fragment.
    empty = np.zeros((5, 5), bool)
    assert crack_measurements(empty, np.ones_like(empty), PX_UM) == dict.fromkeys(CRACK_COLUMNS, 0.0)


def test_a_cap_under_one_percent_is_a_crumb_not_a_fragment():
    assert MIN_FRAGMENT_FRACTION == 0.01
    mask = _disc()  # 5025 px: 1 % is 50.25 px
    for row, cap_px, fragments in ((13, 43, 1.0), (14, 74, 2.0)):
        crack = np.zeros_like(mask)
        crack[row] = mask[row]  # a chord cutting off the rows above it
        assert np.count_nonzero(mask[:row]) == cap_px
        m = crack_measurements(mask, crack, PX_UM)
        assert m["n_fragments"] == fragments
        assert m["crack_splits_section"] == float(fragments >= 2)


def test_a_body_of_exactly_one_percent_counts():
    mask = np.ones((10, 20), bool)  # 200 px: 1 % is 2 px
    one = np.zeros_like(mask)
    one[0, 1] = one[1, 0] = True  # cuts off pixel (0, 0): 1 px, a crumb
    assert count_fragments(mask, one) == 1
    two = np.zeros_like(mask)
    two[0, 2] = two[1, 0] = two[1, 1] = True  # cuts off (0, 0), (0, 1): 2 px, a fragment
    assert count_fragments(mask, two) == 2


def test_separate_cracks_are_counted_and_the_longest_is_compared_to_the_diameter():
    mask = _disc()
    crack = _vertical(mask, 20, 40, col=40) | _vertical(mask, 60, 70, col=60)  # 20 px and 10 px long
    crack[50, 80] = True  # a lone pixel: length 0, not a crack
    crack[0, 0] = True  # outside the section: ignored
    assert sorted(crack_skeleton_lengths_px(crack & mask)) == [0.0, 10.0, 20.0]
    m = crack_measurements(mask, crack, PX_UM)
    assert m["n_cracks"] == 2.0
    assert m["crack_length_um"] == pytest.approx(30 * PX_UM)
    assert m["longest_crack_frac"] == pytest.approx(20 / (2 * math.sqrt(mask.sum() / math.pi)))
    diagonal = np.zeros_like(mask)
    diagonal[np.arange(40, 51), np.arange(40, 51)] = True  # 10 diagonal steps
    assert crack_skeleton_lengths_px(diagonal) == pytest.approx([10 * math.sqrt(2)])


def test_crack_length_is_the_sum_of_the_crack_lengths():
    rng = np.random.default_rng(3)
    crack = ndi.binary_dilation(rng.random((60, 60)) < 0.02)
    mask = np.ones_like(crack)
    total = crack_length_um(crack, PX_UM)
    assert total > 0
    assert crack_measurements(mask, crack, PX_UM)["crack_length_um"] == total
    assert crack_skeleton_lengths_px(crack).sum() * PX_UM == pytest.approx(total)


def test_depth_is_the_euclidean_distance_to_the_outside_of_the_padded_mask():
    rng = np.random.default_rng(0)
    mask = ndi.binary_opening(rng.random((70, 90)) < 0.8) | _disc()[:70, :90]
    want = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    assert depth_px(mask) == pytest.approx(want, abs=1e-5)
    assert depth_px(mask)[~mask].max() == 0.0


def test_measure_particle_appends_the_crack_columns_after_n_fragments():
    mask = _disc()
    phases = _phases(mask, _vertical(mask, 10, 30))
    m = measure_particle(mask, phases, PX_UM)
    keys = list(m)
    assert keys[:4] == ["area_um2", "eq_diameter_um", "porosity_pct", "crack_pct"]
    assert keys[4:12] == list(CRACK_COLUMNS)
    assert keys[12] == "porosity_r50_pct"
    assert m["crack_length_um"] == pytest.approx(1.0)
    assert m["crack_reaches_surface"] == 1.0
    assert all(isinstance(v, float) for v in m.values())


def test_pixel_units_without_a_pixel_size():
    mask = _disc()
    phases = _phases(mask, _vertical(mask, 10, 30))
    in_px = measure_particle(mask, phases, None)
    in_um = measure_particle(mask, phases, PX_UM)
    assert in_px["crack_length_um"] == pytest.approx(20.0)
    for unitless in ("crack_reach_frac", "crack_reaches_surface", "crack_splits_section",
                     "longest_crack_frac", "n_cracks", "n_fragments"):
        assert in_px[unitless] == in_um[unitless]
