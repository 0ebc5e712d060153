"""Edge contrast (`fracscope.edges`): exact on drawn sections, and the generator's SE-like look against its plain one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from fracscope.edges import EDGE_CONTRAST_LIMIT, MAX_SECTIONS, edge_contrast, ring_profile
from fracscope.synth import load_config, make_field

SOLID, MATRIX = 150, 50


def _discs(centres, radius: float = 20, shape=(120, 200), band: int = 0):
    """Discs of grey SOLID on MATRIX; the outline pixels (ring 0) `band` brighter."""
    pixels = np.full(shape, MATRIX, np.uint8)
    instances = np.zeros(shape, np.uint32)
    for pid, (r, c) in enumerate(centres, start=1):
        rr, cc = disk((r, c), radius, shape=shape)
        instances[rr, cc] = pid
        pixels[rr, cc] = SOLID
    if band:
        inner = np.zeros(shape, bool)
        for pid in range(1, len(centres) + 1):
            own = instances == pid
            inner |= own & ~ndi.binary_erosion(own)
        pixels[inner] += band
    return pixels, instances


def test_a_bright_outline_reads_as_its_share_of_the_particle_matrix_contrast():
    pixels, instances = _discs([(40, 40), (60, 120)], band=40)
    # ring 0 at 190, the core at 150, the matrix at 50: (190 - 150) / (150 - 50)
    assert edge_contrast(pixels, instances, 0.1) == pytest.approx(0.4)
    plain, _ = _discs([(40, 40), (60, 120)])
    assert edge_contrast(plain, instances, 0.1) == 0.0


def test_the_profile_holds_one_value_per_ring_and_needs_a_core_brighter_than_the_matrix():
    pixels, instances = _discs([(60, 60)], band=40)
    own = instances == 1
    profile = ring_profile(pixels.astype(np.float32), own, instances == 0, 3, 5.0)
    assert profile.tolist() == pytest.approx([0.4, 0.0, 0.0])
    dark = np.where(own, MATRIX, SOLID).astype(np.float32)  # a dark section on a bright ground
    assert ring_profile(dark, own, instances == 0, 3, 5.0) is None


def test_sections_cut_by_the_border_or_too_small_are_left_out():
    pixels, instances = _discs([(10, 40)], band=40)  # cut by the top edge
    assert edge_contrast(pixels, instances, 0.1) is None
    pixels, instances = _discs([(60, 60)], radius=6, band=40)  # 1.2 µm across at 0.1 µm/px (< 2 µm)
    assert edge_contrast(pixels, instances, 0.1) is None
    assert edge_contrast(pixels, np.zeros_like(instances), 0.1) is None


def test_many_sections_are_read_on_an_even_sample():
    centres = [(30 + 45 * i, 30 + 45 * j) for i in range(7) for j in range(7)]  # 49 > MAX_SECTIONS
    pixels, instances = _discs(centres, radius=18, shape=(340, 340), band=40)
    assert len(centres) > MAX_SECTIONS
    assert edge_contrast(pixels, instances, 0.1) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", [3, 4])  # measured: plain 0.031 / 0.034, SE-like 0.148 / 0.131
def test_the_generators_se_look_is_over_the_limit_and_its_plain_look_under(seed):
    base = ["electrode.field_px=[384,512]", "electrode.pixel_size_um=0.06"]
    values = {}
    for look in ("plain", "se_edges"):
        extra = [] if look == "plain" else ["imaging.looks=[se_edges]"]
        item = make_field(load_config("gp", [*base, *extra]), seed, 0)
        values[look] = edge_contrast(item.image.pixels, item.instances, 0.06)
    assert values["plain"] < EDGE_CONTRAST_LIMIT < values["se_edges"], values
