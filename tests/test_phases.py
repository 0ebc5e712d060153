"""Tests of fracscope.phases: the one step from crop-grid phase probabilities to phase codes on the image grid."""

from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

import fracscope.phases
from fracscope.phases import CropPhases, ImagePhaseCodes, PhaseRule, phases_on_image_grid, predict_crops
from fracscope.phases import resolve_pore_weight  # the model file's rule
from fracscope.cli import compose
from fracscope.model_file import ModelMetadata
from fracscope.types import ParticleCrop, Phase

S = 32  # crop side


def _crop(window: tuple[int, int, int, int]) -> ParticleCrop:
    """A crop whose window is `window` on the image (image and mask content do not matter here)."""
    return ParticleCrop(np.zeros((S, S), np.float32), np.ones((S, S), np.float32), None, 1, 1.0, window)


def _probs(solid: float = 1.0, pore: float = 0.0, background: float = 0.0) -> np.ndarray:
    p = np.zeros((4, S, S), np.float32)
    p[Phase.BACKGROUND], p[Phase.SOLID], p[Phase.PORE] = background, solid, pore
    return p


def test_pasted_back_pore_has_the_area_the_crop_says():
    """A window of the crop's own size: one crop pixel is one image pixel, so the pore area is exact."""
    window = (10, 20, 10 + S, 20 + S)
    probs = _probs()
    probs[Phase.SOLID, 8:13, 4:10], probs[Phase.PORE, 8:13, 4:10] = 0.1, 0.9  # 5 x 6 = 30 crop px of pore
    probs[Phase.SOLID, 20, 20], probs[Phase.CRACK, 20, 20] = 0.2, 0.8
    box = (12, 22, 40, 50)  # the particle's own box, inside the window
    mask = np.ones((box[2] - box[0], box[3] - box[1]), bool)
    mask[-3:, :] = False  # the particle does not fill its box
    got = phases_on_image_grid(CropPhases(probs, _crop(window), box, mask), PhaseRule())
    assert got.phases.shape == mask.shape and got.phases.dtype == np.uint8
    assert (got.phases == Phase.PORE).sum() == 30
    # Crop pixel (r, c) is image pixel (10 + r, 20 + c), i.e. box pixel (r - 2, c - 2).
    assert (got.phases[6:11, 2:8] == Phase.PORE).all()
    assert got.phases[18, 18] == Phase.CRACK
    assert (got.phases[~mask] == Phase.BACKGROUND).all() and (got.phases[mask] != Phase.BACKGROUND).all()
    np.testing.assert_array_equal(got.mask, mask)


def test_a_window_twice_the_crop_scales_the_pore_area_by_four():
    window = (0, 0, 2 * S, 2 * S)
    probs = _probs()
    probs[Phase.SOLID, 8:16, 8:16], probs[Phase.PORE, 8:16, 8:16] = 0.0, 1.0  # 64 crop px
    mask = np.ones((2 * S, 2 * S), bool)
    got = phases_on_image_grid(CropPhases(probs, _crop(window), window, mask), PhaseRule())
    assert abs(int((got.phases == Phase.PORE).sum()) - 4 * 64) <= 2 * 4 * 8  # bilinear: the edge may move half a pixel


def test_the_pore_weight_turns_a_near_tie_into_pore():
    window = (0, 0, S, S)
    probs = _probs(solid=0.52, pore=0.48)
    mask = np.zeros((S, S), bool)
    mask[4:28, 4:28] = True
    unsure = CropPhases(probs, _crop(window), window, mask)
    assert (phases_on_image_grid(unsure, PhaseRule(1.0)).phases[mask] == Phase.SOLID).all()
    weighted = phases_on_image_grid(unsure, PhaseRule(1.1)).phases
    assert (weighted[mask] == Phase.PORE).all() and (weighted[~mask] == Phase.BACKGROUND).all()
    np.testing.assert_array_equal(probs, _probs(solid=0.52, pore=0.48))  # the caller's probabilities are untouched


def _rim_case():
    """A square particle whose 2-px rim the model calls background (0.4) over pore (0.35) and solid."""
    window = (0, 0, S, S)
    mask = np.zeros((S, S), bool)
    mask[4:28, 4:28] = True
    rim = mask & ~np.pad(np.ones((20, 20), bool), 6)
    probs = _probs()
    probs[:, rim] = np.array([0.4, 0.25, 0.35, 0.0], np.float32)[:, None]
    # Background deep inside, away from the rim (say, in a large pore), is not the rim.
    probs[:, 14:17, 14:17] = np.array([0.9, 0.1, 0.0, 0.0], np.float32)[:, None, None]
    return CropPhases(probs, _crop(window), window, mask), rim


def test_the_rim_trim_takes_the_rim_before_the_pore_weight():
    particle, rim = _rim_case()
    trimmed = phases_on_image_grid(particle, PhaseRule(pore_weight=2.0, trim_phases=(Phase.BACKGROUND,)))
    # With the weight first, the rim would be pore (0.7 > 0.4) and stay.
    np.testing.assert_array_equal(trimmed.mask, particle.mask & ~rim)
    assert (trimmed.phases[rim] == Phase.BACKGROUND).all()
    assert trimmed.mask[14:17, 14:17].all() and (trimmed.phases[14:17, 14:17] == Phase.SOLID).all()
    untrimmed = phases_on_image_grid(particle, PhaseRule(pore_weight=2.0))
    np.testing.assert_array_equal(untrimmed.mask, particle.mask)
    assert (untrimmed.phases[rim] == Phase.PORE).all()


def test_a_trim_that_would_take_the_whole_particle_takes_nothing():
    window = (0, 0, S, S)
    mask = np.zeros((S, S), bool)
    mask[10:20, 10:20] = True
    particle = CropPhases(_probs(solid=0.2, background=0.8), _crop(window), window, mask)
    got = phases_on_image_grid(particle, PhaseRule(trim_phases=(Phase.BACKGROUND,)))
    np.testing.assert_array_equal(got.mask, mask)
    assert (got.phases[mask] == Phase.SOLID).all()


def test_pore_weight_resolution():
    assert resolve_pore_weight(SimpleNamespace(pore_weight=1.3)) == 1.3  # the model file's own
    assert resolve_pore_weight(SimpleNamespace(pore_weight=1.3), 0.9) == 0.9  # the run's override wins
    assert resolve_pore_weight(SimpleNamespace()) == 1.0  # a file without the field
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="pore_weight must be positive"):
            resolve_pore_weight(SimpleNamespace(pore_weight=1.3), bad)


class _Backend:
    """Stands in for a model: every crop pixel solid 0.55, pore 0.45."""

    metadata = ModelMetadata(crop_size=S, pore_polarities=("dark",))

    def predict_batched(self, x, batch_size):
        assert x.dtype == np.float32 and x.shape[1:] == (2, S, S)  # image and mask channels
        probs = np.zeros((len(x), 4, S, S), np.float32)
        probs[:, Phase.SOLID], probs[:, Phase.PORE] = 0.55, 0.45
        return np.full((len(x), 3), 1 / 3, np.float32), probs


def test_predict_crops_of_no_crops_has_the_right_shapes():
    classes, phases = predict_crops(_Backend(), [], 8)
    assert classes.shape == (0, 3) and phases.shape == (0, 4, S, S)


def test_infer_and_pores3d_segment_through_the_same_step(monkeypatch):
    """Both callers reach the paste-back only through `phases_on_image_grid`, with the same rule."""
    from fracscope.crop import CropSpec, crop_particles, paste_back
    from fracscope.locate import LocatedParticles
    from fracscope.analysis import AnalysisSettings, Predicted, StageTimes, measure_particles
    from fracscope.pores3d.segment import ModelVoids
    from fracscope.types import SEMImage

    calls = []

    def spy(crop_map, crop, region):
        calls.append(region)
        return paste_back(crop_map, crop, region)

    monkeypatch.setattr(fracscope.phases, "paste_back", spy)
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 <= 30**2
    pixels = np.where(disc, 200, 30).astype(np.uint8)

    # infer: one particle, the model's near-tie made pore by the weight
    instances = disc.astype(np.uint32)
    crops = crop_particles(pixels, instances, CropSpec(size=S))
    classes, probs = predict_crops(_Backend(), crops, 8)
    located = LocatedParticles(SEMImage(pixels, 0.05), instances, crops, {}, None)
    settings = AnalysisSettings(segmenter="crops", classify="head")
    result = measure_particles(Predicted(located, "f", "all", None, None, classes, probs, 1.3), settings, StageTimes())
    assert len(calls) == 1 and (result.phases[disc] == Phase.PORE).all()

    # pores3d: the same section in a one-slice block, the same weight
    block, phases = pixels[None], disc[None].astype(np.uint8)
    ModelVoids(_Backend(), pore_weight=1.3).refine(block, phases)
    assert len(calls) == 2 and calls[0] == calls[1]
    np.testing.assert_array_equal(phases[0], result.phases)
    assert fracscope.pores3d.segment.phases_on_image_grid is fracscope.analysis.phases_on_image_grid


def test_pores3d_refuses_a_weight_the_model_does_not_allow(tmp_path, monkeypatch):
    """The refusal ends `python -m fracscope.pores3d` with a one-line SettingsError."""
    from omegaconf import OmegaConf

    import fracscope.runtime
    from fracscope.pores3d.run import SettingsError, run

    monkeypatch.setattr(fracscope.runtime, "load_backend", lambda *args, **kwargs: _Backend())
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, np.zeros((2, 16, 16), np.uint8))
    cfg = compose("pores3d", f"input={stack}", f"output={tmp_path / 'out'}", "voxel_size_um=[0.02,0.01,0.01]",
                  "segment.method=model", "segment.model=crops", f"segment.model_path={stack}")
    with pytest.raises(SettingsError, match="pore_weight must be positive"):
        run(OmegaConf.merge(cfg, {"segment": {"pore_weight": 0.0}}))


def test_native_phases_trim_the_rim_and_take_the_inside_code():
    """`particle_phases`: rim pixels called matrix and reachable from outside leave the particle; inside the
    (trimmed) mask each pixel gets the most likely of solid, pore and crack."""
    from fracscope.phases import codes_from_probs, particle_phases

    probs = np.zeros((4, 10, 10), np.float32)
    probs[Phase.SOLID] = 0.6
    probs[Phase.BACKGROUND, :, :2] = 0.9  # the left two columns look like matrix
    probs[Phase.CRACK, 5, 2:8] = 0.7  # a crack row
    probs[Phase.BACKGROUND, 5, 5] = 0.95  # matrix-like but inside: stays, takes its inside code (crack)
    codes = codes_from_probs(probs)
    own = np.zeros((10, 10), bool)
    own[1:9, 0:9] = True
    found = particle_phases(codes, (0, 0, 10, 10), own, (Phase.BACKGROUND,))
    assert not found.mask[:, :2].any() and found.mask[1:9, 2:9].all()
    assert (found.phases[5, 2:8] == Phase.CRACK).all() and found.phases[5, 5] == Phase.CRACK
    assert (found.phases[~found.mask] == Phase.BACKGROUND).all()
    assert (found.phases[2, 2:9] == Phase.SOLID).all()
    untrimmed = particle_phases(codes, (0, 0, 10, 10), own)
    assert (untrimmed.mask == own).all()


def test_pores3d_native_voids_take_pore_and_crack_inside_the_main_section_only():
    """`NativeVoids.refine`: inside the slice's largest section, void where the phase model says pore or crack;
    the model sees the whole slice at the stack's pixel size; other sections and the matrix are untouched."""
    from fracscope.pores3d.segment import NativeVoids

    class _Model:
        seen = []

        def predict(self, pixels, pixel_size_um):
            self.seen.append((pixels.shape, pixel_size_um))
            probs = np.zeros((4, *pixels.shape), np.float32)
            probs[Phase.SOLID] = 0.5
            probs[Phase.PORE, 10:12, 10:12] = 0.9  # inside the big section
            probs[Phase.CRACK, 20, 5:25] = 0.8  # a crack row across it
            probs[Phase.PORE, 3, 33] = 0.9  # inside the small section: not refined
            return probs

        def predict_codes(self, pixels, pixel_size_um):
            from fracscope.phases import codes_from_probs

            return codes_from_probs(self.predict(pixels, pixel_size_um))

    phases = np.zeros((1, 32, 40), np.uint8)
    phases[0, 2:30, 2:28] = Phase.SOLID  # the main section
    phases[0, 2:6, 31:36] = Phase.SOLID  # a small one
    model = _Model()
    NativeVoids(model, 0.02).refine(np.zeros((1, 32, 40), np.uint8), phases)
    assert model.seen == [((32, 40), 0.02)]
    assert (phases[0, 10:12, 10:12] == Phase.PORE).all() and (phases[0, 20, 5:25] == Phase.PORE).all()
    assert phases[0, 3, 33] == Phase.SOLID and (phases[0, 0] == 0).all()
    assert int((phases[0] == Phase.PORE).sum()) == 4 + 20


def test_the_pore_decision_weight_tips_pixels_to_pore_and_is_set_in_a_phase_file(tmp_path):
    """codes_from_probs(weight): a pixel at p_pore 0.45 vs p_solid 0.55 becomes pore at weight 1.3, not at 1.0;
    `fracscope-export file.onnx --pore-decision-weight` stores it in a phase model file, which predict_codes reads."""
    import shutil
    from pathlib import Path

    from fracscope.export.cli import main as export_main
    from fracscope.model_file import PhaseMetadata, read_metadata
    from fracscope.phases import codes_from_probs

    probs = np.zeros((4, 1, 3), np.float32)
    probs[Phase.SOLID] = [[0.55, 0.7, 0.2]]
    probs[Phase.PORE] = [[0.45, 0.3, 0.8]]
    assert codes_from_probs(probs).inside.tolist() == [[Phase.SOLID, Phase.SOLID, Phase.PORE]]
    assert codes_from_probs(probs, 1.3).inside.tolist() == [[Phase.PORE, Phase.SOLID, Phase.PORE]]
    assert probs[Phase.PORE, 0, 0] == np.float32(0.45)  # the caller's probabilities are left alone

    path = tmp_path / "phases.onnx"
    shutil.copy(Path(__file__).resolve().parents[1] / "models" / "fracscope_phases.onnx", path)
    assert export_main([str(path), "--pore-decision-weight", "1.3"]) == 0
    assert read_metadata(path, PhaseMetadata).pore_decision_weight == 1.3
    with pytest.raises(SystemExit):
        export_main([str(path), "--pore-weight", "1.3"])  # the crop model's setting


def test_expected_pore_count_keeps_a_fine_pore_the_argmax_drops() -> None:
    from fracscope.phases import particle_phases, pores_by_expected_count

    mask = np.ones((5, 5), bool)
    mask[4, 4] = False  # outside the section
    phases = np.full((5, 5), Phase.SOLID, np.uint8)
    phases[4, 4] = Phase.BACKGROUND
    phases[0, 0] = Phase.CRACK
    phases[2, 2] = Phase.PORE
    prob = np.full((5, 5), 10, np.uint8)  # 0.04: under the floor, counts nothing
    prob[0, 0] = 255  # a crack pixel's pore share is not moved elsewhere
    prob[2, 2] = 200
    prob[1, 2] = prob[3, 2] = prob[2, 1] = prob[2, 3] = 102  # 0.4 each: no argmax pore
    # expected: (200 + 4 * 102) / 255 = 2.38 -> 2 pixels, the centre and the first of the tied neighbours
    out = pores_by_expected_count(phases, prob, mask)
    want = phases.copy()
    want[1, 2] = Phase.PORE
    np.testing.assert_array_equal(out, want)
    # Fewer expected than argmax pores: the most likely stay.
    phases2 = np.full((5, 5), Phase.SOLID, np.uint8)
    phases2[1, 1] = phases2[3, 3] = Phase.PORE
    prob2 = np.zeros((5, 5), np.uint8)
    prob2[1, 1], prob2[3, 3] = 131, 135  # 1.04 expected -> 1
    out2 = pores_by_expected_count(phases2, prob2, np.ones((5, 5), bool))
    assert out2[3, 3] == Phase.PORE and out2[1, 1] == Phase.SOLID and (out2 == Phase.PORE).sum() == 1
    # The route through particle_phases, and argmax leaving the codes as they are.
    codes = ImagePhaseCodes(np.where(mask, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8), phases, prob)
    np.testing.assert_array_equal(particle_phases(codes, (0, 0, 5, 5), mask, pore_count="expected").phases, want)
    np.testing.assert_array_equal(particle_phases(codes, (0, 0, 5, 5), mask).phases, want)  # resolved: 1 px is not
    np.testing.assert_array_equal(particle_phases(codes, (0, 0, 5, 5), mask, pore_count="argmax").phases,
                                  np.where(mask, phases, Phase.BACKGROUND))
    with pytest.raises(ValueError, match="pore_count"):
        particle_phases(codes, (0, 0, 5, 5), mask, pore_count="soft")


def test_a_resolved_pore_keeps_its_outline_and_a_fine_one_its_expected_count() -> None:
    from fracscope.phases import RESOLVED_PORE_PX, particle_phases, pores_by_expected_count

    mask = np.ones((12, 12), bool)
    phases = np.full((12, 12), Phase.SOLID, np.uint8)
    prob = np.zeros((12, 12), np.uint8)
    # A resolved pore: a 3 x 3 block the argmax calls pore (>= RESOLVED_PORE_PX pixels), its 16-pixel ring at
    # 0.3 (the probability the model spills onto a pore's neighbours).
    assert RESOLVED_PORE_PX <= 9
    prob[1:6, 1:6] = 77
    prob[2:5, 2:5] = 230
    phases[2:5, 2:5] = Phase.PORE
    # A fine pore the argmax misses: four pixels at 0.4, far from the first.
    prob[9:11, 9:11] = 102
    resolved = pores_by_expected_count(phases, prob, mask, resolved_px=RESOLVED_PORE_PX)
    want = phases.copy()
    want[9, 9] = want[9, 10] = Phase.PORE  # 4 x 0.4 = 1.6 -> 2 pixels, the first two in raster order
    np.testing.assert_array_equal(resolved, want)
    # The expected count over the whole section also counts the ring: (9 x 230 + 16 x 77 + 4 x 102) / 255 = 14.5
    # -> 15 pixels: the 4 fine ones (0.4) and 2 of the ring (0.3) besides the 9.
    expected = pores_by_expected_count(phases, prob, mask)
    assert (expected == Phase.PORE).sum() == 15
    assert (expected[0:7, 0:7] == Phase.PORE).sum() == 11 and (expected[8:12, 8:12] == Phase.PORE).sum() == 4
    # resolved_px above the pore's size: the whole section is counted as expected.
    np.testing.assert_array_equal(pores_by_expected_count(phases, prob, mask, resolved_px=10), expected)
    codes = ImagePhaseCodes(np.full((12, 12), Phase.SOLID, np.uint8), phases, prob)
    np.testing.assert_array_equal(particle_phases(codes, (0, 0, 12, 12), mask).phases, want)


def test_codes_carry_the_pore_probability_in_255ths() -> None:
    from fracscope.phases import codes_from_probs

    probs = np.zeros((4, 1, 3), np.float32)
    probs[Phase.SOLID] = [[1.0, 0.6, 0.2]]
    probs[Phase.PORE] = [[0.0, 0.4, 0.8]]
    assert codes_from_probs(probs).pore_probability.tolist() == [[0, 102, 204]]


@pytest.mark.parametrize("pore_weight", [1.0, 1.3])
def test_codes_are_the_argmax_of_the_probabilities_ties_to_the_earlier_phase(pore_weight):
    """`codes_from_probs` compares the phase planes instead of calling argmax along the channel axis: the same
    codes, ties included (a quarter-step grid makes many of them)."""
    from fracscope.phases import codes_from_probs

    rng = np.random.default_rng(7)
    for probs in (rng.integers(0, 4, size=(4, 37, 23)).astype(np.float32) / 4, rng.random((4, 19, 41), np.float32)):
        weighted = probs.copy()
        weighted[Phase.PORE] *= np.float32(pore_weight)
        codes = codes_from_probs(probs, pore_weight)
        np.testing.assert_array_equal(codes.best, np.argmax(weighted, axis=0))
        np.testing.assert_array_equal(codes.inside, np.argmax(weighted[1:], axis=0) + 1)
        assert codes.best.dtype == codes.inside.dtype == np.uint8
