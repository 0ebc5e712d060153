"""Pore polarity: the per-image decision, and the folded contrast the networks see bright-pore images in."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from fracscope.detect import Detector
from fracscope.locate import detect_in_dark_pore_contrast
from fracscope.polarity import (
    FOLD_DEPTH,
    RING_PX,
    dark_pore_contrast,
    fill_darkened,
    has_mid_grey_particles,
    image_pore_polarity,
    particle_grey_level,
    stretch,
)
from fracscope.types import SEMImage


def test_pore_polarity_is_bright_when_the_band_around_the_particles_is_mostly_brighter():
    instances = np.zeros((60, 80), np.int32)
    instances[15:45, 10:30] = 1
    instances[15:45, 50:70] = 2
    space = instances == 0
    img = np.where(space, 0.9, 0.5)  # Pt fill around mid-grey particles
    assert image_pore_polarity(img, instances) == "bright"
    # Only the band within RING_PX of a particle counts: dark binder or a collector farther away does not.
    near = ndi.binary_dilation(instances > 0, iterations=RING_PX) & space
    assert image_pore_polarity(np.where(space & ~near, 0.1, img), instances) == "bright"
    # Dark binder in the band's left part (under the 25 % share): still bright; in most of it: dark.
    left = near & (np.arange(80)[None, :] < 14)
    assert 0.15 < left.sum() / near.sum() < 0.25
    assert image_pore_polarity(np.where(left, 0.1, img), instances) == "bright"
    assert image_pore_polarity(np.where(near & (np.arange(80)[None, :] < 60), 0.1, img), instances) == "dark"
    assert image_pore_polarity(np.where(space, 0.1, 0.5), instances) == "dark"  # empty pores
    assert image_pore_polarity(img, np.zeros_like(instances)) == "dark"  # nothing detected: the default


def infiltrated_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 Pt-infiltrated section: mid-grey particles (55 % of pixels), saturated Pt fill (30 %, more
    than any single grey level of the particles), black unfilled voids, a one-pixel particle-grey seam
    where a Pt patch meets a void (as a blurred edge draws it). Returns image, particles, Pt, voids."""
    rng = np.random.default_rng(0)
    particles = np.zeros((100, 100), bool)
    particles[:, :55] = True
    pt = np.zeros_like(particles)
    pt[:, 55:85] = True
    voids = ~particles & ~pt
    img = np.where(particles, 120 + rng.integers(-6, 7, particles.shape), np.where(pt, 255, 0)).astype(np.uint8)
    img[:, 85] = 120  # the seam between the Pt and the voids
    return img, particles, pt, voids


def test_the_particle_grey_level_is_the_mode_away_from_clipped_pt_and_voids():
    img, particles, _, _ = infiltrated_scene()
    grey = particle_grey_level(stretch(img))
    # 255 (Pt) and 0 (voids) are each commoner than any particle level, and are left out.
    assert np.bincount(img.ravel())[255] > np.bincount(img[particles]).max()
    assert grey == pytest.approx(120 / 255, abs=4 / 255)


def test_dark_pore_contrast_makes_the_particles_brightest_and_everything_else_dark():
    img, particles, pt, voids = infiltrated_scene()
    folded = dark_pore_contrast(img)
    assert folded.dtype == np.float32 and folded.shape == img.shape
    assert folded.min() >= 0 and folded.max() <= FOLD_DEPTH + 1e-6
    inner = ndi.binary_erosion(particles, iterations=2)
    # Particles within the noise of the particle grey; Pt (brighter) and voids (darker) both at 0.
    assert folded[inner].min() > FOLD_DEPTH - 8 / 255
    assert folded[ndi.binary_erosion(pt, iterations=2)].max() == 0
    assert folded[ndi.binary_erosion(voids, iterations=2)].max() == 0
    # The one-pixel particle-grey seam is opened away; a 3-px wide one would stay (a real thin section).
    assert folded[:, 85].max() == 0
    wide = img.copy()
    wide[:, 84:87] = 120
    assert dark_pore_contrast(wide)[:, 85].min() > FOLD_DEPTH - 8 / 255


def test_fill_darkened_keeps_the_particle_texture_and_darkens_only_what_is_brighter():
    img, particles, pt, voids = infiltrated_scene()
    seen = fill_darkened(img)
    stretched = stretch(img)
    inner = ndi.binary_erosion(particles, iterations=2)
    # The particles keep their grey level and most of their texture (±6 levels; the seam opening smooths
    # single pixels), where the detector's fold halves it; the Pt is as dark as the voids.
    assert abs(seen[inner].mean() - stretched[inner].mean()) < 4 / 255
    assert seen[inner].std() > 0.5 * stretched[inner].std() > 0
    assert np.corrcoef(seen[inner], stretched[inner])[0, 1] > 0.5
    assert seen[ndi.binary_erosion(pt, iterations=2)].max() == 0 and seen[ndi.binary_erosion(voids, iterations=2)].max() == 0
    assert seen[:, 85].max() == pytest.approx(0.0)  # the seam opened away, as for the detector


class RecordingDetector(Detector):
    """Records what it was given. Finds the pixels within 10 % of the grey range of the image's median
    (the commonest phase: the particles, in either contrast), or with `brightest` the brightest phase (as
    a detector trained on dark pores does: on a Pt-infiltrated image, the Pt)."""

    name = "recording"

    def __init__(self, estimate_um: float | None = None, brightest: bool = False) -> None:
        self.seen: list[np.ndarray] = []
        self.estimated_on: list[np.ndarray] = []
        self.estimate_um = estimate_um
        self.brightest = brightest

    def detect(self, image: SEMImage) -> np.ndarray:
        pixels = np.asarray(image.pixels, float)
        self.seen.append(pixels)
        if self.brightest:
            found = pixels >= pixels.max() - 0.1 * np.ptp(pixels)
        else:
            found = np.abs(pixels - np.median(pixels)) <= 0.1 * np.ptp(pixels)
        return ndi.label(ndi.binary_opening(found, np.ones((3, 3))))[0].astype(np.uint32)

    def estimate_pixel_size_um(self, pixels):
        self.estimated_on.append(np.asarray(pixels, float))
        return None if self.estimate_um is None else self.estimate_um * len(self.estimated_on)


def test_bright_pores_are_detected_again_in_dark_pore_contrast():
    img, particles, _, _ = infiltrated_scene()
    image = SEMImage(img, 0.1)
    # auto: the first detection finds the particle, the band around it is Pt: bright; the second
    # detection runs on the folded image.
    det = RecordingDetector()
    found = detect_in_dark_pore_contrast(image, det, "auto")
    out, instances, polarity, network = found.image, found.instances, found.pore_polarity, found.network_pixels
    assert polarity == "bright" and len(det.seen) == 2
    assert np.array_equal(det.seen[1], dark_pore_contrast(img)) and np.array_equal(network, fill_darkened(img))
    assert (instances[particles] > 0).mean() > 0.95 and not instances[~particles].any()
    assert out.pixels is img  # measurements keep the image's own pixels
    # Set to bright: one detection, on the folded image; set to dark: one, on the image as it is.
    det = RecordingDetector()
    assert detect_in_dark_pore_contrast(image, det, "bright").pore_polarity == "bright" and len(det.seen) == 1
    det = RecordingDetector()
    found = detect_in_dark_pore_contrast(image, det, "dark")
    assert found.pore_polarity == "dark" and found.network_pixels is None and np.array_equal(det.seen[0], img)
    with pytest.raises(ValueError, match="pore_polarity"):
        detect_in_dark_pore_contrast(image, RecordingDetector(), "grey")


def test_a_fill_taken_for_particles_is_found_by_the_histogram_and_the_folded_detection():
    img, particles, pt, _ = infiltrated_scene()
    # The first detection takes the Pt for the particles; the band around it is darker ("dark"), but
    # the histogram shows mid-grey particles: detected again folded, where the band is Pt: bright.
    det = RecordingDetector(brightest=True)
    first = det.detect(SEMImage(img, 0.1))
    assert (first[pt] > 0).mean() > 0.9 and image_pore_polarity(img, first) == "dark"
    assert has_mid_grey_particles(img)
    det = RecordingDetector(brightest=True)
    found = detect_in_dark_pore_contrast(SEMImage(img, 0.1), det, "auto")
    instances = found.instances
    assert found.pore_polarity == "bright" and len(det.seen) == 2
    assert (instances[particles] > 0).mean() > 0.9 and not instances[pt].any()


def test_the_histogram_gate_needs_a_thick_brighter_and_a_darker_phase_around_the_commonest_grey():
    rng = np.random.default_rng(1)
    noise = rng.integers(-6, 7, (100, 100))
    img, _, _, _ = infiltrated_scene()
    assert has_mid_grey_particles(img)
    # Bright particles (the commonest grey) on a dark matrix: nothing brighter.
    cols = np.arange(100)[None, :] + 0 * noise
    dark_pores = np.where(cols < 60, 200, 30) + noise
    assert not has_mid_grey_particles(dark_pores)
    # The commonest grey is the dark matrix, the particles brighter: nothing darker.
    assert not has_mid_grey_particles(np.where(cols < 30, 200, 30) + noise)
    # Thin bright SE edges on bright particles over a dark matrix: the opening leaves no thick brighter phase.
    rims = np.where((cols % 20 == 0) & (cols < 60), 255, dark_pores)
    assert not has_mid_grey_particles(rims)
    # A thick bright FIB Pt cap over a dark-pore section can pass the gate; the band around the particles
    # found in either contrast is dark matrix, so the image stays dark, with its first detection.
    capped = np.where(cols < 70, 130, 30) + noise  # particles the commonest grey in either contrast
    capped[10:20] = 30 + noise[10:20]  # matrix between the cap and the section
    capped[:10] = 255
    assert has_mid_grey_particles(capped)
    det = RecordingDetector()
    found = detect_in_dark_pore_contrast(SEMImage(capped, 0.1), det, "auto")
    assert found.pore_polarity == "dark" and found.network_pixels is None and len(det.seen) == 2
    assert np.array_equal(det.seen[0], capped) and np.array_equal(found.instances, det.detect(found.image))


def test_a_missing_pixel_size_is_estimated_again_on_the_folded_image():
    img, _, _, _ = infiltrated_scene()
    det = RecordingDetector(estimate_um=0.1)  # its second estimate is 0.2
    found = detect_in_dark_pore_contrast(SEMImage(img, None), det, "auto")
    out, polarity, network = found.image, found.pore_polarity, found.network_pixels
    assert polarity == "bright" and len(det.estimated_on) == 2
    assert np.array_equal(det.estimated_on[1], dark_pore_contrast(img)) and network is not None
    assert out.estimated_pixel_size_um == pytest.approx(0.2) and out.pixel_size_source == "estimated"
    # A known pixel size is never estimated.
    det = RecordingDetector(estimate_um=0.1)
    detect_in_dark_pore_contrast(SEMImage(img, 0.05), det, "auto")
    assert det.estimated_on == []


def test_phase_training_sees_a_filled_field_as_inference_does():
    """A generated infiltrated field enters phase-model training with its fill darkened, as
    `locate_particles` hands a bright-pore image to the phase model; a plain field as it is."""
    from fracscope.crop import NORM_PERCENTILES
    from fracscope.data.phase_data import has_filled_pores, prepare_phase_field
    from fracscope.detect.learned import normalise_image, to_working_scale
    from fracscope.synth import load_config, make_field, with_overrides

    cfg = load_config("p", overrides=["electrode.field_px=[192,256]", "electrode.pixel_size_um=0.1"])
    plain = make_field(cfg, 4, 0)
    filled = make_field(with_overrides(cfg, ["imaging.looks=[infiltrated]"]), 4, 0)
    assert has_filled_pores(filled) and not has_filled_pores(plain)
    for item, seen in ((filled, fill_darkened(filled.image.pixels)), (plain, plain.image.pixels)):
        expected = normalise_image(to_working_scale(seen, 2.0), NORM_PERCENTILES).astype(np.float16)
        assert np.array_equal(prepare_phase_field(item, 0.05).image, expected)


def test_a_mosaic_without_a_pixel_size_is_estimated_in_the_contrast_its_pores_need():
    """`as_mosaic` makes one estimate for the whole image, before any detection: folded for bright pores,
    and under auto when the histogram shows mid-grey particles between a fill and voids."""
    from fracscope.detect.tiling import TiledDetector
    from fracscope.mosaic import MosaicPage, as_mosaic

    bright = np.tile(infiltrated_scene()[0], (3, 3))  # 300 x 300 px: tiles of 128 px
    cols = np.arange(300)[None, :] % 100 + 0 * bright
    dark = (np.where(cols < 60, 200, 30) + np.random.default_rng(1).integers(-6, 7, bright.shape)).astype(np.uint8)
    assert has_mid_grey_particles(bright) and not has_mid_grey_particles(dark)
    for pixels, setting, seen in ((bright, "auto", "folded"), (bright, "bright", "folded"), (bright, "dark", "as is"),
                                  (dark, "auto", "as is"), (dark, "dark", "as is")):
        inner = RecordingDetector(estimate_um=0.1)
        page = as_mosaic(SEMImage(pixels, None), TiledDetector(inner, tile_px=128, overlap_px=32), setting)
        assert isinstance(page, MosaicPage) and len(inner.estimated_on) == 1 and not inner.seen  # no detection
        expected = dark_pore_contrast(pixels) if seen == "folded" else pixels
        assert np.array_equal(inner.estimated_on[0], expected), (setting, seen)
        assert page.image.estimated_pixel_size_um == pytest.approx(0.1) and page.image.pixel_size_source == "estimated"
    inner = RecordingDetector(estimate_um=0.1)  # a known pixel size is never estimated
    as_mosaic(SEMImage(bright, 0.05), TiledDetector(inner, tile_px=128, overlap_px=32), "auto")
    assert inner.estimated_on == []
