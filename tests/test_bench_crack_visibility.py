"""bench/crack_visibility.py draws the cracks it says it draws (length, width, where), and none on intact sections."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from crack_visibility import (  # noqa: E402
    EDGE_CLEARANCE_PX,
    CrackSpec,
    draw_section,
    paint_crack,
    path_length_px,
)

from fracscope.synth import load_config  # noqa: E402
from fracscope.types import Phase  # noqa: E402


@pytest.mark.parametrize("width_px", [1, 2, 3])
def test_paint_crack_is_width_pixels_across_a_straight_run(width_px):
    path = np.array([(20, c) for c in range(10, 30)])
    crack = paint_crack(path, width_px, (40, 40))
    assert path_length_px(path) == 20.0
    mid = crack[:, 20]  # a column across the run, away from its ends
    assert mid.sum() == width_px
    assert np.all(np.diff(np.flatnonzero(mid)) == 1)  # one contiguous band
    assert crack[20].sum() == 20 + width_px - 1  # the square brush overhangs the ends by its half-width


@pytest.mark.parametrize(("width_px", "length_um", "start"), [(1, 1.0, "surface"), (2, 2.0, "inside"),
                                                                (3, 0.5, "surface"), (3, 2.0, "inside")])
def test_drawn_section_has_the_requested_crack(width_px, length_um, start):
    px = 0.05
    section = draw_section(load_config("gp"), px, CrackSpec(width_px, length_um, start), np.random.default_rng(3))
    line = section.centreline
    assert abs(path_length_px(line) - length_um / px) <= 1.0
    assert np.abs(np.diff(line, axis=0)).max() == 1  # 8-connected, no repeated pixel
    crack = section.phases == Phase.CRACK
    painted = paint_crack(line, width_px, crack.shape) & section.mask
    assert np.array_equal(crack & painted, painted)  # every painted pixel is crack
    assert (crack & ~painted).sum() <= 0.01 * section.mask.sum()  # only crumbs cut off by the crack are added
    assert not (crack & ~section.mask).any()
    depth = ndi.distance_transform_edt(section.mask)
    if start == "surface":
        assert depth[tuple(line[0])] <= 1.0  # opens to the outline ...
        assert depth[tuple(line[-1])] >= EDGE_CLEARANCE_PX  # ... and runs inward
    else:
        assert depth[line[:, 0], line[:, 1]].min() >= EDGE_CLEARANCE_PX
    assert section.class_name in ("mildly_damaged", "broken")


def test_intact_section_has_no_crack_pixel_but_grains_and_pores():
    section = draw_section(load_config("gp"), 0.06, None, np.random.default_rng(4))
    assert not (section.phases == Phase.CRACK).any()
    assert (section.phases == Phase.PORE).any()
    assert section.boundary.any()
    assert section.class_name == "intact"
    assert len(section.centreline) == 0


def test_shifted_crack_config_changes_the_cracks_and_the_unshifted_one_only_the_damage_fractions():
    from shifted_cracks import config_overrides

    base, shifted, unshifted = (load_config("p", o) for o in ([], config_overrides("shifted"),
                                                               config_overrides("unshifted")))
    assert shifted.particle.crack_width_um != base.particle.crack_width_um
    assert shifted.particle.crack_branches != base.particle.crack_branches
    assert shifted.imaging.pore_level != base.imaging.pore_level
    assert shifted.damage == unshifted.damage != base.damage
    assert unshifted.particle == base.particle and unshifted.imaging == base.imaging
