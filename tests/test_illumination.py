"""Uneven illumination (`fracscope.illumination`): the particles' grey-level trend, exact on drawn images, and
the second detection `fracscope.locate.locate_particles` makes on the evened image."""

from __future__ import annotations

import numpy as np
import pytest

from fracscope.illumination import MIN_SECTIONS, SHADING_LIMIT, evened, particle_grey_trend


def _discs(n_side: int = 6, size: int = 240, radius: int = 12) -> np.ndarray:
    """A label map of n_side x n_side discs on a regular grid."""
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    step = size // n_side
    k = 0
    for i in range(n_side):
        for j in range(n_side):
            k += 1
            cy, cx = step * i + step // 2, step * j + step // 2
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


def _field(labels: np.ndarray, gain: np.ndarray, particle: float = 180.0, matrix: float = 30.0) -> np.ndarray:
    """uint8 image: particles at `particle`, matrix at `matrix`, both times `gain` (black level 0)."""
    flat = np.where(labels > 0, particle, matrix)
    return np.clip(np.rint(flat * gain), 0, 255).astype(np.uint8)


def test_an_evenly_lit_image_has_no_drift_and_is_left_as_it_is():
    labels = _discs()
    image = _field(labels, np.ones(labels.shape))
    trend = particle_grey_trend(image, labels)
    assert trend is not None and trend.n_sections == 36 and trend.quadratic
    assert trend.shading == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(evened(image, trend), image)


def test_a_linear_drift_is_measured_and_evened_out():
    labels = _discs()
    h, w = labels.shape
    x = (np.arange(w) + 0.5) / w * 2 - 1
    gain = np.broadcast_to(1.0 + 0.2 * x, (h, w))  # +-20 % across the width
    image = _field(labels, gain).astype(np.float32)
    trend = particle_grey_trend(image, labels)
    # Fitted on the particles: 180 (1 + 0.2 x); over the central 90 % it spans 2 x 0.2 x 0.9 x 180, taken
    # relative to the median particle signal above the black level (the darkest matrix, 30 x 0.8).
    assert trend.coef[1] == pytest.approx(36.0, rel=0.02) and trend.coef[0] == pytest.approx(180.0, rel=0.01)
    assert trend.black == pytest.approx(24.0, abs=0.5)
    assert trend.shading == pytest.approx(0.36 * 180 / (180 - 24), abs=0.01) and trend.shading > SHADING_LIMIT
    flat = evened(image, trend)
    assert flat.dtype == np.float32
    inside = labels > 0
    assert np.ptp(flat[inside]) < 0.02 * 180  # every particle pixel back at one grey level
    # The matrix is evened about the black level too: its spread shrinks from 30 x 0.4 = 12 grey levels.
    assert np.ptp(flat[~inside]) < 10
    assert np.median(flat[inside]) == pytest.approx(180.0, rel=0.02)


def test_a_vignette_needs_the_quadratic_and_a_few_odd_sections_do_not_move_the_fit():
    labels = _discs()
    h, w = labels.shape
    yy, xx = np.mgrid[:h, :w]
    r2 = ((yy + 0.5) / h * 2 - 1) ** 2 + ((xx + 0.5) / w * 2 - 1) ** 2
    clean = _field(labels, 1.0 - 0.15 * r2).astype(np.float32)
    image = clean.copy()
    for k in (2, 9, 17, 30):  # four dim out-of-plane sections
        image[labels == k] *= 0.6
    trend = particle_grey_trend(image, labels)
    assert trend.quadratic and trend.n_used <= 32  # the four dim sections weigh nothing
    np.testing.assert_allclose(trend.coef, particle_grey_trend(clean, labels).coef, atol=0.5)
    flat = evened(image, trend)
    normal = (labels > 0) & ~np.isin(labels, [2, 9, 17, 30])
    assert np.ptp(flat[normal]) < 0.03 * 180


def test_a_large_image_is_read_on_a_subsample_with_the_same_trend():
    from fracscope.illumination import CORE_SAMPLE_PX

    labels = np.kron(_discs(), np.ones((5, 5), np.int32))  # 1,200 x 1,200 px: read on every 2nd row and column
    assert labels.size > CORE_SAMPLE_PX
    h, w = labels.shape
    x = (np.arange(w) + 0.5) / w * 2 - 1
    image = _field(labels, np.broadcast_to(1.0 + 0.2 * x, (h, w))).astype(np.float32)
    trend = particle_grey_trend(image, labels)
    assert trend.n_sections == 36
    assert trend.coef[1] == pytest.approx(36.0, rel=0.02) and trend.coef[0] == pytest.approx(180.0, rel=0.01)


def test_integer_images_stay_in_their_range_and_too_few_sections_give_no_trend():
    labels = _discs()
    image = _field(labels, np.broadcast_to(np.linspace(0.5, 1.4, 240), (240, 240)))
    trend = particle_grey_trend(image, labels)
    out = evened(image, trend)
    assert out.dtype == np.uint8 and out.max() <= 255
    few = np.where(labels <= MIN_SECTIONS - 1, labels, 0)
    assert particle_grey_trend(image, few) is None
    with pytest.raises(ValueError, match="one grey channel"):
        particle_grey_trend(np.stack([image] * 3, -1), labels)


def test_locate_detects_again_on_the_evened_image_only_when_told_and_over_the_limit():
    import dataclasses

    from fracscope.detect.classical import ClassicalDetector
    from fracscope.locate import locate_particles
    from fracscope.types import SEMImage

    labels = _discs(n_side=6, size=480, radius=30)
    x = np.linspace(-1, 1, 480)
    image = SEMImage(_field(labels, np.broadcast_to(1.0 + 0.35 * x, (480, 480))), 0.1, "tags", "drawn.tif")
    detector = ClassicalDetector()
    on = locate_particles(image, detector, None, "dark", even_illumination=True)
    off = locate_particles(image, detector, None, "dark", even_illumination=False)
    assert on.shading == pytest.approx(off.shading) and on.shading > SHADING_LIMIT
    assert on.illumination_evened and not off.illumination_evened
    np.testing.assert_array_equal(off.image.pixels, image.pixels)
    assert np.ptp(on.image.pixels[labels > 0]) < np.ptp(image.pixels[labels > 0]) / 5
    even = dataclasses.replace(image, pixels=_field(labels, np.ones((480, 480))))
    plain = locate_particles(even, detector, None, "dark")
    assert not plain.illumination_evened and plain.shading < SHADING_LIMIT
    np.testing.assert_array_equal(plain.image.pixels, even.pixels)
