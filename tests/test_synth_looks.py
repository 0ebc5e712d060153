"""Tests of the generator's optional looks (fracscope.synth.imaging.LOOKS, issue 21).

Each look must change the image the way it claims, never the ground truth, and, while it
is off, leave the renders bit-identical to the plain generator (held-out config and
benchmarks depend on it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from fracscope.io.databar import find_data_bar
from fracscope.io.scalebar import find_scale_bar
from fracscope.synth import generate_crops, load_config, make_crop, make_field
from fracscope.synth.databar import BAR_VALUES_UM
from fracscope.synth.imaging import LOOK_FIELDS, LOOKS
from fracscope.types import Phase

FIELD = ["preset=p", "electrode.field_px=[192,256]", "electrode.pixel_size_um=0.1"]
# No global jitter and no noise: a look's change is then the only change between two renders.
STEADY = ["imaging.brightness_jitter=0", "imaging.contrast_jitter=0", "imaging.gamma_range=[1.0,1.0]",
          "imaging.noise_sd=0", "imaging.shot_gain=0"]

# sha256 (first 16 hex) of pixels, instances, phases and meta, rendered at main 037c694 before
# the looks existed (same numpy/scipy as the project's venv). A 16-bit render's pixels are not
# hashed but compared by mean and SD: numpy's float32 pow/exp differ by an ulp between CPUs (the
# stored hash failed at 037c694 itself on an AVX2 machine), which moves single 16-bit levels.
MAIN_HASHES = {
    "crop_gp": "915d9751f20464c7",
    "crop_gp_heldout": "21134771a03d02b1",
    "crop_bright16": "aaf6f40ef9fed420",
    "crop_randomized": "98d11f214a27f886",
    "field_p": "9c2c357d90da0df5",
    "field_gp_heldout": "ca7d2e4ea469433b",
}


# Mean and SD of the 16-bit renders' pixels at 037c694 (see above).
MAIN_PIXEL_STATS = {"crop_bright16": (17145.15132451812, 17328.160929968108)}


def _hash(item) -> str:
    d = hashlib.sha256()
    pixels = item.image.pixels
    arrays = (item.instances, item.phases) if pixels.dtype == np.uint16 else (pixels, item.instances, item.phases)
    for a in arrays:
        d.update(np.ascontiguousarray(a).tobytes())
    d.update(json.dumps(item.meta, sort_keys=True).encode())
    return d.hexdigest()[:16]


def _render(name: str, extra: list[str] = ()):
    fast = ["crops.pixel_size_um=[0.08,0.08]"]
    cases = {
        "crop_gp": (load_config("gp", [*fast, *extra]), "crop"),
        "crop_gp_heldout": (load_config("gp", list(extra), heldout=True), "crop"),
        "crop_bright16": (load_config("gp", [*fast, "imaging.pore_polarity=bright", "imaging.bit_depth=16", *extra]), "crop"),
        "crop_randomized": (load_config("gp", [*fast, "+imaging.randomize.noise_sd=[0.01,0.05]", *extra]), "crop"),
        "field_p": (load_config("p", ["electrode.field_px=[192,256]", *extra]), "field"),
        "field_gp_heldout": (load_config("gp", ["electrode.field_px=[192,256]", *extra], heldout=True), "field"),
    }
    cfg, kind = cases[name]
    return make_crop(cfg, 3, 1) if kind == "crop" else make_field(cfg, 3, 0)


@pytest.mark.parametrize("name", sorted(MAIN_HASHES))
def test_default_renders_are_those_of_main(name):
    item = _render(name)
    assert _hash(item) == MAIN_HASHES[name]
    if name in MAIN_PIXEL_STATS:  # ulp-level: a few levels up and down, < 1e-8 of the mean; a real change: far more
        pixels = item.image.pixels.astype(np.float64)
        assert (pixels.mean(), pixels.std()) == pytest.approx(MAIN_PIXEL_STATS[name], rel=1e-7)


def test_look_parameters_change_nothing_while_their_look_is_off():
    # Every look parameter moved far from its default, every look at probability 0.
    moved = [f"imaging.{k}=0.5" for k in LOOK_FIELDS] + [f"imaging.looks_p.{k}=0.0" for k in LOOKS]
    for name in ("crop_gp", "field_p"):
        assert _hash(_render(name, moved)) == MAIN_HASHES[name]


def _field(looks: list[str], extra: list[str] = (), seed: int = 4):
    over = [*FIELD, *STEADY, *extra] + ([f"imaging.looks=[{','.join(looks)}]"] if looks else [])
    return make_field(load_config("p", over), seed, 0)


def _same_truth(a, b) -> None:
    assert np.array_equal(a.instances, b.instances) and np.array_equal(a.phases, b.phases)
    assert [(p.class_name, p.measurements) for p in a.particles] == [(p.class_name, p.measurements) for p in b.particles]


@pytest.fixture(scope="module")
def plain():
    return _field([])


def test_infiltrated_fill_is_bright_binder_and_unfilled_voids_dark(plain):
    it = _field(["infiltrated"], ["imaging.binder_fraction=0.3", "imaging.unfilled_fraction=0.1"])
    _same_truth(plain, it)
    assert it.meta["looks"] == ["infiltrated"] and "looks" not in plain.meta
    px = it.image.pixels.astype(float)
    inner = ndi.binary_erosion(it.phases == Phase.SOLID, iterations=3)
    matrix = ndi.binary_erosion(it.instances == 0, iterations=3)
    solid_med = np.median(px[inner])
    # Matrix: mostly bright fill, with binder patches and unfilled voids darker than the particles.
    assert np.median(px[matrix]) > solid_med + 60
    dark_share = np.mean(px[matrix] < 0.6 * solid_med)
    assert 0.2 < dark_share < 0.6, dark_share  # binder 0.3 + unfilled 0.1 (overlapping) of the matrix
    # Plain look: the matrix is darker than the particles.
    ppx = plain.image.pixels.astype(float)
    assert np.median(ppx[matrix]) < np.median(ppx[inner]) - 60


@pytest.mark.parametrize(("open_empty", "closed_fill", "brighter"), [(0.0, 1.0, True), (1.0, 0.0, False)])
def test_infiltrated_voids_inside_particles_filled_or_empty(plain, open_empty, closed_fill, brighter):
    it = _field(["infiltrated"], [f"imaging.unfilled_pore_p={open_empty}", f"imaging.closed_pore_fill_p={closed_fill}",
                                  "imaging.blur_um=0.0"])
    _same_truth(plain, it)
    px = it.image.pixels.astype(float)
    void = it.phases >= Phase.PORE
    assert void.sum() > 50
    solid = ndi.binary_erosion(it.phases == Phase.SOLID, iterations=3)
    if brighter:
        assert np.median(px[void]) > np.median(px[solid]) + 60
    else:
        assert np.median(px[void]) < np.median(px[solid]) - 60


def test_se_edges_brighten_outlines(plain):
    it = _field(["se_edges"], ["imaging.se_shading=0"])
    _same_truth(plain, it)
    solid = it.phases == Phase.SOLID
    rim = solid & ~ndi.binary_erosion(solid)
    inner = ndi.binary_erosion(solid, iterations=6)

    def rim_excess(item):
        px = item.image.pixels.astype(float)
        return np.mean(px[rim]) - np.mean(px[inner])

    assert rim_excess(it) > rim_excess(plain) + 40


def test_charging_adds_horizontal_streaks(plain):
    it = _field(["charging"], ["imaging.charging_row_fraction=0.2", "imaging.charging_strength=0.3"])
    _same_truth(plain, it)
    d = it.image.pixels.astype(float) - plain.image.pixels.astype(float)
    assert np.abs(d).mean() > 2
    along = np.abs(np.diff(d, axis=1)).mean()
    across = np.abs(np.diff(d, axis=0)).mean()
    assert across > 2 * along, (along, across)  # streaks run along the scan lines


def test_shading_drifts_the_grey_level_smoothly_across_the_field():
    from fracscope.illumination import particle_grey_trend

    def gain(it, base):
        return it.image.pixels.astype(float) / np.maximum(base.image.pixels.astype(float), 1.0)

    # Seed 8 draws a linear drift (darker left), seed 13 a vignette.
    base = _field([], seed=8)
    it = _field(["shading"], ["imaging.shading_strength=0.3"], seed=8)
    _same_truth(base, it)
    g = np.where(base.instances > 0, gain(it, base), np.nan)  # on the particles (no dark-pixel quantisation)
    left, right = np.nanmedian(g[:, :64]), np.nanmedian(g[:, -64:])
    assert 0.7 < left < 0.9 and 1.1 < right < 1.3, (left, right)  # darker on one side, brighter on the other
    # fracscope.illumination reads it as uneven, and the plain render as even
    assert particle_grey_trend(it.image.pixels, it.instances).shading > 0.15
    assert particle_grey_trend(base.image.pixels, base.instances).shading < 0.15
    base = _field([], seed=13)
    it = _field(["shading"], ["imaging.shading_strength=0.3"], seed=13)
    _same_truth(base, it)
    g = np.where(base.instances > 0, gain(it, base), np.nan)
    h, w = g.shape
    centre = np.nanmedian(g[h // 2 - 32:h // 2 + 32, w // 2 - 32:w // 2 + 32])
    edges = np.nanmedian(np.concatenate([g[:, :16].ravel(), g[:, -16:].ravel()]))
    assert 0.95 < centre < 1.05 and 0.75 < edges < 0.9, (centre, edges)  # 1 - 0.3 (x^2 + y^2) / 2


def test_smear_blurs(plain):
    it = _field(["smear"], ["imaging.smear_um=0.4"])
    _same_truth(plain, it)

    def grad(item):
        gy, gx = np.gradient(item.image.pixels.astype(float))
        return np.hypot(gy, gx).mean()

    assert grad(it) < 0.8 * grad(plain)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_data_bar_rows_are_background_and_the_bar_reads_the_pixel_size(plain, bit_depth):
    it = _field(["data_bar"], [f"imaging.bit_depth={bit_depth}"])
    h, w = plain.image.pixels.shape
    px = it.image.pixels
    rows = px.shape[0] - h
    assert px.shape[1] == w and 0.05 * h < rows < 0.25 * h
    assert it.instances.shape == it.phases.shape == px.shape
    assert not it.instances[h:].any() and not it.phases[h:].any()
    assert np.array_equal(it.instances[:h], plain.instances) and np.array_equal(it.phases[:h], plain.phases)
    u8 = (px // 257).astype(np.uint8) if bit_depth == 16 else px
    assert find_data_bar(u8) == rows
    line = find_scale_bar(u8[h:])
    assert line is not None
    value_um = line.length_px * it.image.pixel_size_um
    assert min(abs(value_um / v - 1) for v in BAR_VALUES_UM) < 0.03, value_um


def test_looks_drawn_per_image_keep_the_truth():
    base = ["crops.pixel_size_um=[0.1,0.1]", *STEADY]
    plain = list(generate_crops(load_config("p", base), 10, seed=7))
    mixed = list(generate_crops(load_config("p", [*base, "imaging.looks_p.infiltrated=0.5",
                                                   "imaging.looks_p.se_edges=0.5"]), 10, seed=7))
    seen = set()
    for a, b in zip(plain, mixed):
        _same_truth(a, b)
        looks = tuple(b.meta["looks"])
        seen.add(looks)
        px = b.image.pixels.astype(float)
        bg = np.median(px[ndi.binary_erosion(b.instances == 0, iterations=2)])
        solid = np.median(px[ndi.binary_erosion(b.phases == Phase.SOLID, iterations=3)])
        assert (bg > solid) == ("infiltrated" in looks)
    assert len(seen) >= 3  # the draw differs between images


def test_unknown_look_is_refused():
    with pytest.raises(ValueError, match="unknown look"):
        make_crop(load_config("p", ["imaging.looks=[sparkle]"]), 0, 0)
    with pytest.raises(ValueError, match="unknown look"):
        make_crop(load_config("p", ["+imaging.looks_p.sparkle=0.5"]), 0, 0)


def test_cache_key_ignores_look_parameters_while_no_look_is_on():
    plain = load_config("gp")
    assert not set(LOOK_FIELDS) & set(plain.key_dict()["imaging"])
    moved = load_config("gp", ["imaging.fill_level=0.5"])
    assert moved.key_dict() == plain.key_dict() and moved.to_dict() != plain.to_dict()
    on = load_config("gp", ["imaging.looks_p.infiltrated=0.3"])
    assert on.key_dict() != plain.key_dict() and "fill_level" in on.key_dict()["imaging"]


def _contact_lines(instances: np.ndarray, min_px: int = 10) -> list[tuple[int, float]]:
    """(length, straightness) of each contact between two particles at least `min_px` long:
    straightness = sd of its pixels across their main direction (0 for a straight line)."""
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[1:, :], np.s_[:-1, :])):
        ia, ib = instances[a], instances[b]
        touch = (ia != ib) & (ia > 0) & (ib > 0)
        for y, x, i, j in zip(*np.nonzero(touch), ia[touch], ib[touch]):
            pairs.setdefault((min(i, j), max(i, j)), []).append((y, x))
    out = []
    for pts in pairs.values():
        pts = np.unique(np.array(pts, float), axis=0)
        if len(pts) >= min_px:
            out.append((len(pts), float(np.sqrt(np.linalg.eigvalsh(np.cov(pts.T))[0]))))
    return out


def test_calendered_packing_is_denser_with_flat_contacts():
    base = ["electrode.field_px=[256,320]", "electrode.pixel_size_um=0.1"]
    loose = make_field(load_config("p", base), 5, 0)
    dense = make_field(load_config("p", [*base, "electrode.contact_overlap=0.15", "electrode.area_fraction=0.75"]), 5, 0)
    assert np.mean(dense.instances > 0) > np.mean(loose.instances > 0) + 0.08
    loose_lines, dense_lines = _contact_lines(loose.instances), _contact_lines(dense.instances)
    assert len(dense_lines) >= 8 and len(dense_lines) >= 3 * len(loose_lines)
    # Pressed sections meet on their radical line: long contacts are straight within a pixel.
    assert np.median([sd for _, sd in dense_lines]) < 0.6
    for p in dense.particles:  # classes still hold on the flattened masks
        crack = (dense.instances == p.particle_id) & (dense.phases == Phase.CRACK)
        assert (p.class_name == "intact") == (not crack.any())


def test_high_magnification_field_cuts_few_particles_and_huge_canvases_are_refused():
    cfg = load_config("p", ["electrode.field_px=[384,384]", "electrode.pixel_size_um=0.01"])
    it = make_field(cfg, 5, 0)
    assert 1 <= len(it.particles) <= 4
    assert any(p.measurements["touches_border"] == 1 for p in it.particles)
    with pytest.raises(ValueError, match="canvas"):
        make_field(load_config("p", ["electrode.field_px=[64,64]", "electrode.pixel_size_um=0.001"]), 5, 0)


@pytest.mark.train
@pytest.mark.parametrize(("experiment", "data"), [("detector", "detector_looks"), ("phases", "phases_looks")])
def test_training_recipe_draws_looks_per_field(experiment, data):
    from hydra import compose, initialize_config_dir

    from fracscope import assets
    from fracscope.data.detector_data import FieldSynthSpec
    from fracscope.settings import settings_from_config

    with initialize_config_dir(config_dir=str(assets.CONF_DIR), version_base="1.3"):
        default = compose("train", overrides=[f"experiment={experiment}"])
        cfg = compose("train", overrides=[f"experiment={experiment}", f"data={data}"])
    assert cfg.data._target_ == default.data._target_ and cfg.data.tile_px == default.data.tile_px
    # A recipe's list of synth overrides replaces the default's: it must repeat the default's own.
    assert set(default.data.synth.overrides) <= set(cfg.data.synth.overrides)
    spec = settings_from_config(FieldSynthSpec, cfg.data.synth, "recipe")
    job = spec.jobs()[0]
    assert job.imaging.looks_p["infiltrated"] > 0 and "fill_level" in job.imaging.randomize
    default_spec = settings_from_config(FieldSynthSpec, default.data.synth, "default")
    assert job.key_dict() != default_spec.jobs()[0].key_dict()
    # A phase model trained on the recipe records that it saw filled pores.
    assert spec.pore_polarities() == ["dark", "bright"] and default_spec.pore_polarities() == ["dark"]
    small = replace(job, electrode=replace(job.electrode, field_px=(96, 128), pixel_size_um=0.1))
    looks = [tuple(make_field(small, 0, i).meta["looks"]) for i in range(8)]
    assert len(set(looks)) >= 3  # drawn per field


@pytest.mark.parametrize("pixel_size_um", [0.03, 0.1, 0.2])
def test_scale_bar_reader_reads_the_generated_data_bar(pixel_size_um):
    import shutil

    pytest.importorskip("pytesseract")
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract binary not installed")
    from fracscope.io.scalebar import scale_bar_pixel_size_um

    cfg = load_config("p", ["electrode.field_px=[400,1024]", f"electrode.pixel_size_um={pixel_size_um}",
                            "imaging.looks=[data_bar]"])
    reading = scale_bar_pixel_size_um(make_field(cfg, 1, 0).image.pixels)
    assert reading is not None and reading.pixel_size_um == pytest.approx(pixel_size_um, rel=0.02)


@pytest.mark.parametrize(("binder", "unfilled"), [(0.05, 0.0), (0.5, 0.15)])  # the training draws' extremes
def test_auto_pore_polarity_calls_infiltrated_fields_bright_and_plain_ones_dark(plain, binder, unfilled):
    from fracscope.polarity import image_pore_polarity

    it = _field(["infiltrated"], [f"imaging.binder_fraction={binder}", f"imaging.unfilled_fraction={unfilled}"])
    assert image_pore_polarity(it.image.pixels, it.instances) == "bright"
    assert image_pore_polarity(plain.image.pixels, plain.instances) == "dark"
    # A detector that finds only 70 % of the particles leaves the plain field dark.
    ids = np.unique(plain.instances[plain.instances > 0])
    missed = np.isin(plain.instances, ids[::3])
    assert image_pore_polarity(plain.image.pixels, np.where(missed, 0, plain.instances)) == "dark"
