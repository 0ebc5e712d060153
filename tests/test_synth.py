"""Tests of the synthetic SEM generator (fracscope.synth).

The class checker below is written from the definitions (scipy.ndimage.label), not
imported from the generator, so it can catch the generator lying about its classes.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage as ndi

from fracscope.measure import measure_particle
from fracscope.synth import SYNTH_VERSION, generate_crops, generate_electrode, load_config, make_field
from fracscope.synth.generate import _pack
from fracscope.synth.geometry import canvas_half_px
from fracscope.types import CLASS_NAMES

FAST_PX = ["crops.pixel_size_um=[0.08,0.08]"]
DAMAGE = (0.4, 0.3, 0.3)


def independent_class(mask: np.ndarray, phases: np.ndarray) -> str:
    """intact: no crack; mild: crack but one 4-connected body; broken: >= 2 bodies each >= 5 %."""
    crack = mask & (phases == 3)
    if not crack.any():
        return "intact"
    lab, n = ndi.label(mask & ~crack)  # default structure = 4-connectivity
    sizes = np.bincount(lab.ravel())[1:]
    if n == 1:
        return "mildly_damaged"
    if n >= 2 and np.all(sizes >= 0.05 * mask.sum()):
        return "broken"
    return f"invalid(n={n}, smallest={sizes.min() / mask.sum():.3f})"


@pytest.fixture(scope="module")
def gp_crops():
    cfg = load_config("gp", [*FAST_PX, f"damage=[{DAMAGE[0]},{DAMAGE[1]},{DAMAGE[2]}]"])
    return list(generate_crops(cfg, 200, seed=11))


@pytest.fixture(scope="module")
def p_crops():
    return list(generate_crops(load_config("p", FAST_PX), 200, seed=12))


def _same(a, b) -> bool:
    return (
        np.array_equal(a.image.pixels, b.image.pixels)
        and np.array_equal(a.instances, b.instances)
        and np.array_equal(a.phases, b.phases)
        and [(p.class_name, p.measurements) for p in a.particles] == [(p.class_name, p.measurements) for p in b.particles]
    )


def test_same_seed_same_output_different_seed_differs():
    cfg = load_config("gp", FAST_PX)
    a = list(generate_crops(cfg, 3, seed=5))
    b = list(generate_crops(cfg, 3, seed=5))
    c = list(generate_crops(cfg, 3, seed=6))
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x.image.pixels, y.image.pixels) for x, y in zip(a, c))
    f1 = next(generate_electrode(load_config("p", ["electrode.field_px=[256,256]"]), 1, seed=3))
    f2 = next(generate_electrode(load_config("p", ["electrode.field_px=[256,256]"]), 1, seed=3))
    assert _same(f1, f2)


def test_annotated_image_contract(gp_crops):
    it = gp_crops[0]
    assert it.image.pixels.dtype == np.uint8 and it.image.pixel_size_source == "synthetic"
    assert it.image.pixel_size_um == pytest.approx(0.08)
    assert it.instances.dtype == np.uint32 and it.phases.dtype == np.uint8
    assert set(np.unique(it.instances)) == {0, 1}
    assert np.array_equal(it.instances > 0, it.phases > 0)
    assert it.meta["synth_version"] == SYNTH_VERSION and it.meta["preset"] == "gp"
    m = it.particles[0].measurements
    assert {"porosity_pct", "sphere_diameter_um", "touches_border", "eq_diameter_um"} <= set(m)
    assert 5.0 <= m["sphere_diameter_um"] <= 15.0 and m["touches_border"] == 0
    # The section is never a perfect disc: perimeter well above that of the equal-area circle.
    mask = it.instances > 0
    r = math.sqrt(mask.sum() / math.pi)
    yy, xx = np.mgrid[-int(r) - 2 : int(r) + 3, -int(r) - 2 : int(r) + 3]
    disc = yy**2 + xx**2 <= r * r

    def perim(m):
        return np.count_nonzero(m & ~ndi.binary_erosion(m))

    assert perim(mask) > 1.15 * perim(disc)


def test_classes_hold_on_output_grid_and_mix_matches(gp_crops):
    got = []
    for it in gp_crops:
        (p,) = it.particles
        assert independent_class(it.instances == p.particle_id, it.phases) == p.class_name
        got.append(p.class_name)
    counts = Counter(got)
    n = len(got)
    for name, frac in zip(CLASS_NAMES, DAMAGE):
        se = math.sqrt(frac * (1 - frac) / n)
        assert abs(counts[name] / n - frac) <= 3 * se, (name, counts)


def test_gp_porosity_and_gradient(gp_crops):
    ms = [it.particles[0].measurements for it in gp_crops]
    mean = np.mean([m["porosity_pct"] for m in ms])
    r50 = np.mean([m["porosity_r50_pct"] for m in ms])
    r100 = np.mean([m["porosity_r100_pct"] for m in ms])
    assert abs(mean - 8.0) <= 0.5, mean
    assert abs(r50 - 13.0) <= 1.0, r50
    assert r50 - r100 >= 3.0, (r50, r100)


def test_p_porosity_flat(p_crops):
    ms = [it.particles[0].measurements for it in p_crops]
    mean = np.mean([m["porosity_pct"] for m in ms])
    prof = [np.mean([m[f"porosity_r{f}_pct"] for m in ms]) for f in (50, 60, 70, 80, 90, 100)]
    assert abs(mean - 2.0) <= 0.3, mean
    assert max(prof) - min(prof) <= 0.5, prof


def test_measurements_are_recomputable(gp_crops):
    it = gp_crops[1]
    p = it.particles[0]
    m = measure_particle(it.instances == p.particle_id, it.phases, it.image.pixel_size_um)
    assert m["porosity_pct"] == pytest.approx(p.measurements["porosity_pct"])


def test_electrode_field_touching_particles_and_classes():
    cfg = load_config("gp", ["electrode.field_px=[384,512]", "damage=[0.3,0.4,0.3]"])
    fields = list(generate_electrode(cfg, 25, seed=2))
    parts = [(f, p) for f in fields for p in f.particles]
    assert len(parts) >= 25
    for f, p in parts:
        mask = f.instances == p.particle_id
        assert mask.any()
        assert independent_class(mask, f.phases) == p.class_name
    assert any(p.measurements["touches_border"] == 1 for _, p in parts)
    # Particles touch: some particle pixel has a 4-neighbour of another particle.
    inst = fields[0].instances.astype(np.int64)
    touch = (inst[:, 1:] > 0) & (inst[:, :-1] > 0) & (inst[:, 1:] != inst[:, :-1])
    assert touch.any()
    assert fields[0].image.pixel_size_um == pytest.approx(0.05)


def test_heldout_config_is_shifted_and_bright_pores_option():
    base = load_config("gp")
    held = load_config("gp", heldout=True)
    assert held.seed != base.seed
    assert held.imaging.noise_sd > base.imaging.noise_sd
    assert held.electrode.pixel_size_um != base.electrode.pixel_size_um
    assert load_config("p", heldout=True).preset.name == "p"
    cfg = load_config("gp", [*FAST_PX, "imaging.pore_polarity=bright", "imaging.bit_depth=16"])
    it = next(generate_crops(cfg, 1, seed=0))
    px = it.image.pixels
    assert px.dtype == np.uint16 and it.meta["pore_polarity"] == "bright"
    assert px[it.phases == 2].mean() > px[it.phases == 1].mean()


RANDOMIZE = ["+imaging.randomize.noise_sd=[0.01,0.05]", "+imaging.randomize.particle_level=[0.5,0.75]"]


def test_imaging_randomisation_draws_per_image_and_keeps_the_ground_truth():
    steady = [*FAST_PX, "imaging.brightness_jitter=0", "imaging.contrast_jitter=0", "imaging.gamma_range=[1.0,1.0]"]
    fixed = list(generate_crops(load_config("gp", steady), 4, seed=21))
    drawn = list(generate_crops(load_config("gp", [*steady, *RANDOMIZE]), 4, seed=21))
    levels = []
    for a, b in zip(fixed, drawn):
        # Imaging is drawn after the geometry, so labels are those of the fixed look.
        assert np.array_equal(a.phases, b.phases) and np.array_equal(a.instances, b.instances)
        assert a.particles[0].class_name == b.particles[0].class_name
        assert not np.array_equal(a.image.pixels, b.image.pixels)
        assert "imaging" not in a.meta
        im = b.meta["imaging"]
        assert set(im) == {"noise_sd", "particle_level"}
        assert 0.01 <= im["noise_sd"] <= 0.05 and 0.5 <= im["particle_level"] <= 0.75
        solid = b.image.pixels[b.phases == 1] / 255.0
        levels.append((im["particle_level"], float(np.median(solid))))
    assert len({round(d, 6) for d, _ in levels}) == 4  # one draw per image
    drawn_levels, measured = np.array(levels).T
    assert np.corrcoef(drawn_levels, measured)[0, 1] > 0.95  # the draw reaches the pixels


def test_imaging_randomisation_rejects_unknown_or_empty_ranges():
    from fracscope.synth.imaging import ImagingParams

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="not a scalar imaging parameter"):
        ImagingParams.draw({"randomize": {"noise": [0.0, 1.0]}}, rng)
    with pytest.raises(ValueError, match="is empty"):
        ImagingParams.draw({"randomize": {"noise_sd": [0.05, 0.01]}}, rng)
    assert ImagingParams.draw({"noise_sd": 0.02}, rng) == ImagingParams(noise_sd=0.02)


def test_cli_writes_dataset(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "fracscope.synth", f"output={out}", "kind=crops", "n=3", "seed=4", "preset=p",
           "crops.pixel_size_um=[0.09,0.09]", "imaging.noise_sd=0.05"]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True)
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["info"]["synth_version"] == SYNTH_VERSION
    assert len(ann["images"]) == 3
    assert all(im["pixel_size_um"] == pytest.approx(0.09) for im in ann["images"])
    assert (out / "preview.png").is_file()
    assert len(list((out / "images").glob("*.tif"))) == 3


def test_short_cracks_are_short_thin_and_mild():
    """particle.short_crack_fraction=1: every mildly damaged section holds only 1-2 short cracks (skeleton no
    longer than their drawn length allows), and a config without short cracks draws the same images as before
    the option existed (no extra random draw)."""
    from skimage.morphology import skeletonize

    px = 0.08
    lengths = (1.0, 2.0)
    cfg = load_config("gp", [*FAST_PX, "damage=[0,1,0]", "particle.short_crack_fraction=1.0",
                             f"particle.short_crack_length_um=[{lengths[0]},{lengths[1]}]"])
    crops = list(generate_crops(cfg, 24, seed=21))
    longs = list(generate_crops(load_config("gp", [*FAST_PX, "damage=[0,1,0]"]), 24, seed=21))
    short_um, long_um = [], []
    for sample, out in ((crops, short_um), (longs, long_um)):
        for crop in sample:
            mask = crop.instances == 1
            assert independent_class(mask, crop.phases) == crop.particles[0].class_name
            crack = mask & (crop.phases == 3)
            out.append(skeletonize(crack).sum() * px)
    # Two cracks at most, each routed along grain boundaries (<= ~2x its straight length) plus its width.
    assert max(short_um) <= 2 * 2.5 * lengths[1] + 1.0
    assert min(short_um) > 0
    assert np.median(short_um) < 0.5 * np.median(long_um)
    same = list(generate_crops(load_config("gp", [*FAST_PX, "damage=[0,1,0]", "particle.short_crack_fraction=0.0"]), 3, seed=21))
    assert all(_same(a, b) for a, b in zip(same, longs[:3]))


# sha256 (first 16 hex) of a default gp field's pixels, instances, phases, truth table and meta (seed 3),
# rendered at main 8842879 before electrode.packed_field_um existed (same numpy/scipy as the project's venv).
PACKED_OFF_HASHES = {0.05: ("[192,256]", "b8b6419af733ddbf"), 0.02: ("[256,256]", "20103c34dcc002e6")}
WINDOW = ["electrode.pixel_size_um=0.2", "electrode.field_px=[120,120]"]  # a 24 µm field


def _field_hash(item) -> str:
    d = hashlib.sha256()
    for a in (item.image.pixels, item.instances, item.phases):
        d.update(np.ascontiguousarray(a).tobytes())
    d.update(json.dumps([(p.particle_id, p.class_name, p.measurements) for p in item.particles], sort_keys=True).encode())
    d.update(json.dumps(item.meta, sort_keys=True).encode())
    return d.hexdigest()[:16]


def _true_section_diameter_um(item) -> float:
    """Visible-area-weighted mean of the generator's section diameters (sphere size and cut height)."""
    m = [p.measurements for p in item.particles]
    area = np.array([v["area_um2"] for v in m])
    d = 2 * np.sqrt(np.maximum([0.25 * v["sphere_diameter_um"] ** 2 - v["section_offset_um"] ** 2 for v in m], 0))
    return float((area * d).sum() / area.sum())


@pytest.mark.parametrize("px", sorted(PACKED_OFF_HASHES))
def test_packed_field_off_or_no_larger_than_the_field_renders_as_before(px):
    shape, expected = PACKED_OFF_HASHES[px]
    base = [f"electrode.pixel_size_um={px}", f"electrode.field_px={shape}"]
    cfg = load_config("gp", base)
    assert cfg.electrode.packed_field_um == 0 and "packed_field_um" not in cfg.key_dict()["electrode"]
    assert _field_hash(make_field(cfg, 3, 0)) == expected
    # A packing no larger than the field (its shorter side) is the field itself.
    side_um = 192 * px if shape == "[192,256]" else 256 * px
    same = load_config("gp", [*base, f"electrode.packed_field_um={side_um}"])
    assert "packed_field_um" in same.key_dict()["electrode"]
    assert _field_hash(make_field(same, 3, 0)) == expected


def test_packed_field_window_is_the_centre_of_the_larger_packing_and_matches_its_truth():
    px, seed = 0.2, 5
    cfg = load_config("gp", [*WINDOW, "electrode.packed_field_um=80", "damage=[0.3,0.4,0.3]"])
    item = make_field(cfg, seed, 0)
    h, w = item.instances.shape
    assert (h, w) == (120, 120) and item.phases.shape == (h, w) and item.image.pixels.shape == (h, w)
    # The same rng stream packs the 80 µm area first; the field is its centre, 28 µm in from each side.
    placed = _pack(cfg, (80.0, 80.0), np.random.default_rng([seed, 1, 0]))
    by_spec = {(s.sphere_diameter_um, s.offset_um): (y - 28.0, x - 28.0, s) for y, x, s in placed}
    assert len(placed) > 5 * len(item.particles)  # most of the packing lies off the field and is not rendered
    ids = [p.particle_id for p in item.particles]
    assert ids == list(range(1, len(ids) + 1)) and set(np.unique(item.instances)) == {0, *ids}
    from_outside = 0
    for p in item.particles:
        m = p.measurements
        y, x, spec = by_spec[(m["sphere_diameter_um"], m["section_offset_um"])]
        mask = item.instances == p.particle_id
        rows, cols = np.nonzero(mask)
        half = canvas_half_px(spec, px)
        # Every pixel lies on the particle's canvas at its packed position, shifted by the window's offset.
        assert np.abs(rows - int(round(y / px))).max() <= half and np.abs(cols - int(round(x / px))).max() <= half
        on_edge = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        assert m["touches_border"] == float(on_edge)
        assert m["area_um2"] == pytest.approx(mask.sum() * px * px)
        assert independent_class(mask, item.phases) == p.class_name
        assert np.all(item.phases[mask] > 0) and not np.any(item.phases[item.instances == 0])
        if not (0 <= y <= h * px and 0 <= x <= w * px):
            from_outside += 1
            assert on_edge  # a section centred off the field is cut by its border and says so
    assert from_outside >= 1


def test_packed_field_gives_a_small_field_the_sections_of_a_large_one():
    """The area-weighted true section diameter of 24 µm windows of an 80 µm packing matches that of
    80 µm fields; 24 µm fields packed alone have smaller sections (the bias the option removes)."""
    window = load_config("gp", [*WINDOW, "electrode.packed_field_um=80"])
    alone = load_config("gp", WINDOW)
    large = load_config("gp", ["electrode.pixel_size_um=0.2", "electrode.field_px=[400,400]"])
    seeds = range(1, 9)
    d_window = np.mean([_true_section_diameter_um(make_field(window, s, 0)) for s in seeds])
    d_alone = np.mean([_true_section_diameter_um(make_field(alone, s, 0)) for s in seeds])
    d_large = np.mean([_true_section_diameter_um(make_field(large, s, 0)) for s in seeds[:3]])
    assert abs(d_window - d_large) < 0.4
    assert d_large - d_alone > 0.8
