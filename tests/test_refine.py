import numpy as np
import pytest

from fracscope.refine import RIM_TRIM_PHASES, most_likely_one_of, trim_rim
from fracscope.types import Phase

from scenes import disc


def test_a_dilated_mask_is_trimmed_back_to_the_particle():
    particle = disc((60, 60), (30, 30), 20)
    mask = disc((60, 60), (30, 30), 24)
    trimmed = trim_rim(mask, ~particle)
    np.testing.assert_array_equal(trimmed, particle)


def test_background_inside_the_particle_is_not_rim():
    particle = disc((60, 60), (30, 30), 20)
    lake = disc((60, 60), (30, 30), 6)  # a large pore the model calls background
    mask = disc((60, 60), (30, 30), 24)
    trimmed = trim_rim(mask, ~particle | lake)
    np.testing.assert_array_equal(trimmed, particle)


def test_background_reaching_in_from_the_edge_is_trimmed_along_its_whole_path():
    mask = np.ones((20, 20), bool)  # fills its box: the box edge is outside
    background = np.zeros_like(mask)
    background[10, :12] = True  # a channel from the left edge
    trimmed = trim_rim(mask, background)
    np.testing.assert_array_equal(trimmed, ~background)


def test_nothing_to_trim_keeps_the_mask_and_shapes_must_agree():
    mask = disc((30, 30), (15, 15), 10)
    np.testing.assert_array_equal(trim_rim(mask, np.zeros_like(mask)), mask)
    with pytest.raises(ValueError, match="differ in shape"):
        trim_rim(mask, np.zeros((3, 3), bool))


def test_background_around_a_hole_in_the_mask_is_not_rim():
    particle = disc((60, 60), (30, 30), 20)
    hole = disc((60, 60), (30, 30), 3)  # the detector left a pore out of the mask
    halo = disc((60, 60), (30, 30), 6) & ~hole
    trimmed = trim_rim(particle & ~hole, halo)
    np.testing.assert_array_equal(trimmed, particle & ~hole)


def test_most_likely_one_of_picks_the_argmax_phases_inside_the_mask():
    prob = np.array(
        [  # background, solid, pore, crack at four pixels
            [[0.5, 0.1, 0.3, 0.25]],
            [[0.2, 0.6, 0.3, 0.25]],
            [[0.2, 0.2, 0.4, 0.25]],
            [[0.1, 0.1, 0.0, 0.25]],
        ]
    )
    mask = np.array([[True, True, True, False]])
    np.testing.assert_array_equal(most_likely_one_of(prob, mask, [Phase.BACKGROUND]), [[True, False, False, False]])
    np.testing.assert_array_equal(
        most_likely_one_of(prob, mask, RIM_TRIM_PHASES["background_or_pore"]), [[True, False, True, False]]
    )
    assert not most_likely_one_of(prob, mask, RIM_TRIM_PHASES["none"]).any()
