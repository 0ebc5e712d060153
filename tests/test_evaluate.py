"""Source-resolution porosity truth of `fracscope.evaluate` on a constructed image."""

from __future__ import annotations

import numpy as np
import pytest

from fracscope.crop import CropSpec
from fracscope.data.datamodule import crops_from_items
from fracscope.evaluate import native_truth
from fracscope.types import AnnotatedImage, ParticleAnnotation, Phase, SEMImage

pytestmark = pytest.mark.train  # the whole module needs the training stack (torch)


def _two_particle_image() -> AnnotatedImage:
    h, w = 200, 320
    rr, cc = np.ogrid[:h, :w]
    inst = np.zeros((h, w), np.uint32)
    inst[(rr - 100) ** 2 + (cc - 80) ** 2 <= 50**2] = 1
    inst[(rr - 100) ** 2 + (cc - 230) ** 2 <= 40**2] = 2
    phases = np.where(inst > 0, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    pores = (inst == 1) & (rr % 6 == 0) & (cc % 6 == 0)  # 1-px pores, every 36th pixel of particle 1
    phases[pores] = Phase.PORE
    pixels = np.full((h, w), 60, np.uint8)  # matrix
    pixels[inst > 0] = 200
    pixels[pores] = 10
    particles = [ParticleAnnotation(1, "intact", {}), ParticleAnnotation(2, "intact", {})]
    return AnnotatedImage(SEMImage(pixels, 0.05, "synthetic"), "two", inst, phases, particles)


def test_native_truth_is_exact_at_the_source_resolution():
    item = _two_particle_image()
    spec = CropSpec(size=32)  # a 100 px particle shrunk ~4×: 1-px pores are lost or kept by chance
    arrays = crops_from_items([item], spec)
    native = native_truth([item], spec)
    assert len(native.porosity_pct) == len(arrays) == 2
    m1 = item.instances == 1
    expected = 100.0 * np.count_nonzero(m1 & (item.phases == Phase.PORE)) / np.count_nonzero(m1)
    np.testing.assert_allclose(native.porosity_pct, [expected, 0.0])
    # Pores are darker than the matrix, so a global Otsu threshold finds exactly them.
    np.testing.assert_allclose(native.otsu_porosity_pct, [expected, 0.0])
    # The crop-grid truth of the shrunken particle is not the source porosity.
    crop_truth = 100.0 * np.count_nonzero((arrays.phases[0] == Phase.PORE) & (arrays.mask[0] > 0)) / np.count_nonzero(arrays.mask[0])
    assert abs(crop_truth - expected) > 0.5


def test_native_evaluation_scores_the_shipped_phase_model_on_the_image_grid(tmp_path):
    """A phase model file is scored on the image grid with its class rule; every number comes out, in range,
    and the 1-px pores of the constructed image are found (the crop route shrank such pores away)."""
    from fracscope.assets import resolve_phase_model
    from fracscope.evaluate import evaluate_items, is_phase_model

    model = resolve_phase_model(None)
    assert is_phase_model(model) and not is_phase_model(tmp_path / "x.ckpt")
    report = evaluate_items([_two_particle_image()], model, tmp_path / "eval")
    m = report.metrics
    assert m["n_particles"] == 2 and 0.0 <= m["native_macro_f1"] <= 1.0
    assert m["pore_iou_all"] > 0.3  # 1-px dark pores on a bright section
    assert abs(m["porosity_bias_pp"]) < 2.0
    assert (tmp_path / "eval" / "metrics.json").is_file() and (tmp_path / "eval" / "particles.csv").is_file()
