"""The shared crop: centring, own mask, border padding, geometry, normalisation, paste_back."""

from __future__ import annotations

import numpy as np
import pytest

from fracscope.crop import (
    CropSpec,
    clip_window,
    crop_particle,
    crop_particles,
    crop_window,
    normalize_intensity,
    paste_back,
    resize_phases,
    strided_sample,
)
from fracscope.measure import count_fragments
from fracscope.types import Phase

from scenes import disc


@pytest.fixture
def scene():
    """Two touching discs (1, 2), one cut by the top-left corner (3), on a noisy matrix."""
    shape = (160, 200)
    rng = np.random.default_rng(0)
    inst = np.zeros(shape, np.uint32)
    for pid, c, r in ((1, (70, 60), 20), (2, (70, 99), 19), (3, (5, 4), 14)):
        inst[disc(shape, c, r) & (inst == 0)] = pid
    phases = (inst > 0).astype(np.uint8)
    phases[(rng.random(shape) < 0.04) & (inst > 0)] = Phase.PORE
    pixels = (np.array([50, 190, 20, 10])[phases] + rng.normal(0, 5, shape)).clip(0, 255).astype(np.uint8)
    return pixels, inst, phases


def _centroid(mask):
    rr, cc = np.nonzero(mask)
    return rr.mean(), cc.mean()


def test_particle_is_centred_and_geometry_consistent(scene):
    pixels, inst, phases = scene
    crop = crop_particle(pixels, inst, 1, CropSpec(size=64, margin=0.15), phases=phases)
    assert crop.image.shape == crop.mask.shape == crop.phases.shape == (64, 64)
    assert crop.image.dtype == np.float32 and crop.mask.dtype == np.float32
    assert 0.0 <= crop.image.min() and crop.image.max() <= 1.0
    wr0, wc0, wr1, wc1 = crop.bbox
    side = wr1 - wr0
    assert wc1 - wc0 == side == int(np.ceil(41 * 1.3))  # box is 41 px, margin 15 % each side
    assert crop.scale == pytest.approx(64 / side)
    cy, cx = _centroid(crop.mask > 0)
    assert abs(cy - 31.5) < 1.0 and abs(cx - 31.5) < 1.0
    # The documented pixel-centre geometry maps the crop centroid back onto the particle's.
    sy, sx = _centroid(inst == 1)
    assert wr0 + (cy + 0.5) / crop.scale - 0.5 == pytest.approx(sy, abs=0.6)
    assert wc0 + (cx + 0.5) / crop.scale - 0.5 == pytest.approx(sx, abs=0.6)
    # Area scales with scale²; phases inside the mask are particle phases.
    assert crop.mask.sum() == pytest.approx((inst == 1).sum() * crop.scale**2, rel=0.05)
    assert np.all(crop.phases[crop.mask > 0] > 0)
    # Enlarging works too (window smaller than the crop).
    big = crop_particle(pixels, inst, 1, CropSpec(size=128))
    assert big.mask.sum() == pytest.approx((inst == 1).sum() * big.scale**2, rel=0.05)


def test_own_mask_excludes_touching_neighbour(scene):
    pixels, inst, _ = scene
    crop = crop_particle(pixels, inst, 1, CropSpec(size=64))
    assert set(np.unique(crop.mask)) == {0.0, 1.0}
    # Neighbour 2 lies inside particle 1's window, but none of it is in the mask.
    wr0, wc0, wr1, wc1 = crop.bbox
    assert (inst[wr0:wr1, wc0:wc1] == 2).sum() > 50
    r0, c0, r1, c1 = clip_window(crop, inst.shape)
    own = paste_back(crop.mask, crop, (r0, c0, r1, c1)) > 0.5
    assert own.shape == (r1 - r0, c1 - c0)
    region = inst[r0:r1, c0:c1]
    assert not np.any(own & (region == 2))
    iou = (own & (region == 1)).sum() / (own | (region == 1)).sum()
    assert iou > 0.9


def test_border_particle_is_padded(scene):
    pixels, inst, phases = scene
    crop = crop_particle(pixels, inst, 3, CropSpec(size=48), phases=phases)
    wr0, wc0, _, _ = crop.bbox
    assert wr0 < 0 and wc0 < 0  # window sticks out of the image
    pad_rows = int(np.floor(-wr0 * crop.scale))
    assert pad_rows >= 1
    # Outside the image: no particle and matrix phase, but a real-looking (reflected) image.
    assert crop.mask[:pad_rows].sum() == 0 and np.all(crop.phases[:pad_rows] == 0)
    assert crop.image[:pad_rows].std() > 0.05
    assert crop.mask.sum() > 0 and np.isfinite(crop.image).all()


def test_crop_particles_matches_single_crops(scene):
    pixels, inst, phases = scene
    crops = crop_particles(pixels, inst, CropSpec(size=32, margin=0.2), phases=phases)
    assert [c.particle_id for c in crops] == [1, 2, 3]
    for c in crops:
        ref = crop_particle(pixels, inst, c.particle_id, CropSpec(size=32, margin=0.2), phases=phases)
        assert c.bbox == ref.bbox
        np.testing.assert_array_equal(c.image, ref.image)
        np.testing.assert_array_equal(c.mask, ref.mask)
        np.testing.assert_array_equal(c.phases, ref.phases)
    assert [c.particle_id for c in crop_particles(pixels, inst, CropSpec(32, 0.2), ids=[2])] == [2]
    with pytest.raises(ValueError, match="particle 9"):
        crop_particles(pixels, inst, CropSpec(32, 0.2), ids=[9])


def test_normalisation_is_robust_and_safe():
    rng = np.random.default_rng(1)
    img = rng.normal(120, 20, (100, 100)).clip(0, 255).astype(np.uint8)
    spiky = img.copy()
    spiky[rng.integers(0, 100, 10), rng.integers(0, 100, 10)] = 255  # 0.1 % saturated
    a, b = normalize_intensity(img), normalize_intensity(spiky)
    assert a.dtype == np.float32 and a.min() == 0.0 and a.max() == 1.0
    assert np.median(np.abs(a - b)) < 0.02
    # Min-max scaling is dragged by the spikes; percentiles are not.
    def minmax(x):
        x = x.astype(np.float32)
        return (x - x.min()) / (x.max() - x.min())

    assert np.mean(np.abs(a - b)) < 0.03 < np.mean(np.abs(minmax(img) - minmax(spiky)))
    for dtype, scale in ((np.uint16, 257), (np.float64, 1 / 255)):
        np.testing.assert_allclose(normalize_intensity((img.astype(np.float64) * scale).astype(dtype)), a, atol=1e-3)
    with np.errstate(all="raise"):
        flat = normalize_intensity(np.full((8, 8), 7, np.uint16))
    assert flat.dtype == np.float32 and np.all(flat == 0)


@pytest.mark.parametrize(("shape", "max_samples", "stride"), [
    ((300, 400), 10_000, 4),  # ceil(sqrt(12)) = 4: 75 x 100 = 7,500 px
    ((1001, 1001), 250_500, 3),  # a stride of 2 leaves 501 x 501 = 251,001
    ((4, 9), 4, 4),  # ceil(sqrt(9)) = 3 leaves 2 x 3 = 6: the edges' rounding up needs one more
    ((7, 1), 3, 3),
    ((5, 5), 1, 5),
    ((5, 5), 25, 1),  # no more pixels than allowed: the image itself
])
def test_a_strided_sample_is_the_sparsest_grid_within_its_bound(shape, max_samples, stride):
    img = np.arange(int(np.prod(shape))).reshape(shape)
    sample = strided_sample(img, max_samples)
    assert np.shares_memory(sample, img)  # a view, not a copy
    np.testing.assert_array_equal(sample, img[::stride, ::stride])
    assert sample.size <= max_samples
    assert stride == 1 or img[::stride - 1, ::stride - 1].size > max_samples  # the smallest stride that fits
    np.testing.assert_array_equal(strided_sample(img.copy(), max_samples), sample)  # the same every time


def test_a_strided_sample_of_a_small_image_gives_the_full_percentiles():
    img = np.random.default_rng(2).gamma(2.0, 30.0, (60, 80)).astype(np.float32)
    assert strided_sample(img, img.size) is img
    np.testing.assert_array_equal(np.percentile(strided_sample(img, img.size), (0.5, 99.5)),
                                  np.percentile(img, (0.5, 99.5)))
    np.testing.assert_array_equal(normalize_intensity(img, max_samples=img.size), normalize_intensity(img))
    with pytest.raises(ValueError, match="2-D"):
        strided_sample(img[None], 100)
    with pytest.raises(ValueError, match="max_samples"):
        strided_sample(img, 0)


def test_percentiles_of_a_large_image_come_from_its_strided_sample():
    img = np.random.default_rng(1).gamma(2.0, 30.0, (300, 400)).astype(np.float32)
    sub = normalize_intensity(img, max_samples=10_000)  # every 4th row and column: 7,500 px
    lo, hi = (float(v) for v in np.percentile(img[::4, ::4], (0.5, 99.5)))
    np.testing.assert_array_equal(sub, np.clip((img - np.float32(lo)) * np.float32(1 / (hi - lo)), 0, 1))
    assert sub.dtype == np.float32 and sub.min() == 0.0 and sub.max() == 1.0
    assert 0 < np.abs(sub - normalize_intensity(img)).max() < 0.02  # measured 0.011
    assert not normalize_intensity(np.full((50, 50), 7.0), max_samples=100).any()


def test_crop_normalisation_robust_to_saturated_pixels(scene):
    pixels, inst, _ = scene
    spiky = pixels.copy()
    crop = crop_particle(pixels, inst, 1, CropSpec(size=64))
    wr0, wc0, wr1, wc1 = crop.bbox
    spiky[wr0 + 3, wc0 : wc0 + 5] = 255
    spiky[wr0 + 10, wc0 + 20 : wc0 + 22] = 0
    crop_spiky = crop_particle(spiky, inst, 1, CropSpec(size=64))
    assert np.median(np.abs(crop_spiky.image - crop.image)) < 0.02


@pytest.mark.parametrize(("size", "radius", "centre"), [(64, 30, (80, 100)), (128, 12, (80, 100)), (64, 20, (10, 190))])
def test_paste_back_round_trips_a_smooth_map(size, radius, centre):
    """A smooth map sampled at crop pixel centres (documented geometry) comes back on the source grid."""
    shape = (160, 200)
    inst = disc(shape, centre, radius).astype(np.uint32)
    crop = crop_particle(np.zeros(shape, np.float32), inst, 1, CropSpec(size=size))

    def field(r, c):  # two channels, smooth on the scale of the particle
        return np.stack([0.5 + 0.4 * np.sin(r / 11.0) * np.cos(c / 13.0), 0.5 + 0.3 * np.cos((r + c) / 17.0)])

    wr0, wc0, wr1, wc1 = crop.bbox
    j = (np.arange(size) + 0.5) / crop.scale - 0.5
    crop_map = field((wr0 + j)[:, None], (wc0 + j)[None, :]).astype(np.float32)
    r0, c0, r1, c1 = clip_window(crop, shape)
    assert r0 == max(wr0, 0) and c1 == min(wc1, shape[1])
    back = paste_back(crop_map, crop, (r0, c0, r1, c1))
    truth = field(np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :])
    assert back.shape == truth.shape
    inner = (slice(None), slice(2, -2), slice(2, -2))  # the outermost pixels extrapolate
    assert np.abs(back[inner] - truth[inner]).max() < 0.02
    # The particle's own box (what inference measures on) is a sub-region of the same map.
    pr0, pc0 = np.argwhere(inst == 1).min(0)
    pr1, pc1 = np.argwhere(inst == 1).max(0) + 1
    own_box = paste_back(crop_map, crop, (pr0, pc0, pr1, pc1))
    np.testing.assert_array_equal(own_box, back[:, pr0 - r0 : pr1 - r0, pc0 - c0 : pc1 - c0])
    # Region parts outside the window are 0; a 2-D map gives a 2-D result.
    outside = paste_back(crop_map[0], crop, (wr0 - 3, wc0, wr0 + 2, wc0 + 4))
    assert outside.shape == (5, 4) and np.all(outside[:3] == 0)


def test_window_rules():
    assert crop_window((10, 20, 30, 40), 0.0) == (10, 20, 30, 40)
    wr0, wc0, wr1, wc1 = crop_window((0, 0, 10, 4), 0.5)
    assert wr1 - wr0 == wc1 - wc0 == 20 and (wr0 + wr1) / 2 == 5 and (wc0 + wc1) / 2 == 2
    with pytest.raises(ValueError, match="not in the instance map"):
        crop_particle(np.zeros((5, 5)), np.zeros((5, 5), np.uint32), 1)


@pytest.mark.parametrize("side", [300, 257, 131])
def test_shrinking_keeps_a_one_pixel_crack_separating(side):
    # A disc cut in two by a wavy 1-px crack (8-connected: it separates the 4-connected body).
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (0.45 * side) ** 2
    phases = np.where(disc, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    crack_col = np.round(side / 2 + 5 * np.sin(np.arange(side) / 7)).astype(int)
    phases[disc & (xx == crack_col[:, None])] = Phase.CRACK
    assert count_fragments(disc, phases == Phase.CRACK) == 2

    small = resize_phases(phases, 96)
    mask = small > 0
    assert count_fragments(mask, small == Phase.CRACK) == 2
    # crack stays inside the section, and nothing but crack changed relative to nearest sampling
    assert not ((small == Phase.CRACK) & ~mask).any()
    assert set(np.unique(small)) == {Phase.BACKGROUND, Phase.SOLID, Phase.CRACK}


def test_phase_resize_is_plain_nearest_when_enlarging():
    rng = np.random.default_rng(0)
    phases = rng.integers(0, 4, size=(40, 40)).astype(np.uint8)
    big = resize_phases(phases, 80)
    assert np.array_equal(big, np.repeat(np.repeat(phases, 2, 0), 2, 1))


@pytest.mark.parametrize("dtype, levels", [(np.uint8, 256), (np.uint16, 65536), (np.uint16, 4096)])
def test_integer_percentiles_from_the_histogram_equal_numpys(dtype, levels):
    """8- and 16-bit images take their percentiles off the histogram: exactly `np.percentile`'s linear ones."""
    from fracscope.crop import intensity_range

    rng = np.random.default_rng(levels)
    for _ in range(20):
        img = rng.integers(0, levels, size=tuple(rng.integers(1, 200, 2))).astype(dtype)
        for q in ((0.5, 99.5), (1.0, 99.0), (0.0, 100.0), (37.3, 62.1)):
            assert intensity_range(img, *q) == tuple(float(v) for v in np.percentile(img.astype(np.float32), q))
    ramp = np.arange(101, dtype=dtype).reshape(1, -1)
    assert intensity_range(ramp, 0.5, 99.5) == (0.5, 99.5)  # interpolated between order statistics
