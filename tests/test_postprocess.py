"""Tests of fracscope.detect.postprocess: training maps from labels and labels from maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from fracscope.detect import match_instances
from fracscope.detect.postprocess import PostprocessParams, labels_from_maps, maps_from_labels, object_scores

from scenes import lumpy_disc


def lumpy(shape, cy, cx, r, seed):
    return lumpy_disc(shape, cy, cx, r, np.random.default_rng(seed), amplitude=(0.02, 0.06), harmonics=(2, 3, 5))


def scene():
    """Ground truth with the hard cases.

    1: a broken lumpy particle, a crack (3 px wide, bent) right through it; the crack
       pixels belong to the particle (filled section), as in the synth ground truth.
    2, 3: two discs touching along a contact line (the later one yields the overlap).
    4, 5, 6: a row of three touching lumpy particles of different sizes.
    7: a small isolated disc.
    Returns (instances, crack mask).
    """
    shape = (320, 420)
    inst = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a = lumpy(shape, 90, 100, 60, seed=1)
    inst[a] = 1
    across = (yy - 90) - 0.6 * (xx - 100) - 8 * np.sin((xx - 100) / 18)
    crack = (np.abs(across) <= 1.5) & a
    inst[np.hypot(yy - 80, xx - 270) <= 45] = 2
    disc3 = (np.hypot(yy - 80, xx - 355) <= 45) & (inst == 0)
    inst[disc3] = 3
    for k, (cy, cx, r) in enumerate([(250, 80, 40), (245, 150, 33), (255, 220, 42)], start=4):
        inst[lumpy(shape, cy, cx, r, seed=k) & (inst == 0)] = k
    inst[np.hypot(yy - 260, xx - 360) <= 14] = 7
    return inst, crack


def test_maps_from_labels_is_the_normalised_distance_to_the_instance_boundary():
    inst, crack = scene()
    fg, dist = maps_from_labels(inst)
    assert fg.dtype == dist.dtype == np.float32
    np.testing.assert_array_equal(fg, (inst > 0).astype(np.float32))
    assert (dist[inst == 0] == 0).all()
    assert dist.min() >= 0 and dist.max() <= 1
    peaks = ndi.maximum(dist, inst, index=np.arange(1, 8))
    np.testing.assert_allclose(peaks, 1.0)
    # Cracks inside a particle are not boundaries: the distance does not drop along it
    # (its centre part is far from the outline), but it does drop at the 2|3 contact.
    centre_crack = crack & (np.hypot(*np.mgrid[:320, :420] - np.array([90, 100])[:, None, None]) < 20)
    assert dist[centre_crack].min() > 0.6
    contact = (inst == 2) & ndi.binary_dilation(inst == 3)
    assert contact.any() and dist[contact].max() < 0.05
    # Every instance pixel is inside its own particle: > 0.
    assert (dist[inst > 0] > 0).all()


@pytest.mark.parametrize("params", [PostprocessParams(), PostprocessParams(seed_h=0.2)], ids=["threshold", "h-maxima"])
def test_labels_from_exact_maps_recover_the_instances(params):
    inst, _ = scene()
    fg, dist = maps_from_labels(inst)
    labels = labels_from_maps(fg, dist, params=params)
    assert labels.dtype == np.uint32
    assert labels.max() == inst.max() == 7
    m = match_instances(inst, labels, iou=0.9)
    assert m.tp == 7, (m.tp, m.fp, m.fn)


def test_broken_particle_stays_one_and_touching_discs_split_on_smooth_noisy_maps():
    """Network outputs are smooth and imperfect: blur and perturb the exact maps."""
    inst, crack = scene()
    fg, dist = maps_from_labels(inst)
    rng = np.random.default_rng(0)
    fg_p = np.clip(ndi.gaussian_filter(fg, 2.0) + ndi.gaussian_filter(rng.normal(0, 0.3, fg.shape), 2), 0, 1)
    # The network is unsure on the crack: lower foreground there, but above 0.5.
    fg_p[crack] = np.minimum(fg_p[crack], 0.6)
    dist_p = np.clip(ndi.gaussian_filter(dist, 2.0) + ndi.gaussian_filter(rng.normal(0, 0.2, fg.shape), 2), 0, 1)
    labels = labels_from_maps(fg_p, dist_p)
    assert labels.max() == 7
    m = match_instances(inst, labels, iou=0.8)
    assert m.tp == 7, (m.tp, m.fp, m.fn)
    # The broken particle is one label covering both sides of its crack.
    ids, counts = np.unique(labels[inst == 1], return_counts=True)
    assert ids[np.argmax(counts)] > 0 and counts.max() > 0.95 * (inst == 1).sum()
    # The touching discs are two labels.
    assert labels[80, 270] != labels[80, 355] and labels[80, 270] > 0 and labels[80, 355] > 0


def test_boundary_map_variant_separates_touching_particles():
    inst, _ = scene()
    fg = (inst > 0).astype(np.float32)
    # Boundary probability: 1 on a 2-px band where labels change (inner boundaries).
    boundary = (ndi.grey_dilation(inst, size=3) != ndi.grey_erosion(inst, size=3)) & (inst > 0)
    labels = labels_from_maps(fg, boundary_prob=boundary.astype(np.float32))
    assert labels.max() == 7
    assert match_instances(inst, labels, iou=0.85).tp == 7


def test_small_objects_removed_and_enclosed_holes_filled():
    inst, _ = scene()
    fg, dist = maps_from_labels(inst)
    yy, xx = np.mgrid[: inst.shape[0], : inst.shape[1]]
    pore = np.hypot(yy - 250, xx - 80) <= 6  # a pore the network called matrix
    fg[pore] = 0
    dist[pore] = 0
    fg[10:14, 400:404] = 1  # a 16-px speck
    dist[10:14, 400:404] = 1
    filled = labels_from_maps(fg, dist, params=PostprocessParams(min_area_px=30))
    assert filled.max() == 7
    assert filled[10:14, 400:404].max() == 0
    assert (filled[pore] == filled[250, 100]).all() and filled[250, 100] > 0
    kept = labels_from_maps(fg, dist, params=PostprocessParams(min_area_px=10, fill_holes=False))
    assert kept.max() == 8
    assert (kept[pore] == 0).all()


def test_objects_the_network_half_believes_in_are_dropped_by_min_score():
    inst, _ = scene()
    fg, dist = maps_from_labels(inst)
    fg = fg * 0.99
    doubtful_id = int(inst[250, 100])
    fg[inst == doubtful_id] = 0.8  # above the foreground threshold, but only just believed
    all_kept = labels_from_maps(fg, dist, params=PostprocessParams())
    assert all_kept.max() == 7
    kept = labels_from_maps(fg, dist, params=PostprocessParams(min_score=0.9))
    assert kept.max() == 6 and kept[250, 100] == 0
    assert match_instances(inst, kept, iou=0.85).tp == 6


def test_an_object_score_leaves_out_the_holes_it_was_given():
    labels = np.zeros((10, 10), np.int32)
    labels[1:9, 1:9] = 1
    labels[0, 0] = 2
    fg = np.zeros((10, 10), np.float32)
    fg[1:9, 1:9] = 0.96
    fg[3:7, 3:7] = 0.0     # a filled hole: the network sees matrix there
    fg[1, 1:9] = 0.6       # foreground, if doubtfully: counts
    fg[0, 0] = 0.4         # an object with no pixel above the threshold scores 0
    scores = object_scores(fg, labels, foreground_threshold=0.5)
    assert scores[1] == pytest.approx((40 * 0.96 + 8 * 0.6) / 48)
    assert scores[2] == 0.0


def test_a_cracked_particle_keeps_its_place_under_min_score():
    # A particle with many enclosed cracks and pores (holes the watershed fills) is believed where it is
    # solid: over all of its pixels it would score about 0.99 x 0.85 and be dropped like a half-believed
    # binder clump.
    inst, _ = scene()
    fg, dist = maps_from_labels(inst)
    fg = fg * 0.99
    cracked = inst == int(inst[250, 100])
    grid = (np.arange(inst.shape[0])[:, None] % 5 < 2) & (np.arange(inst.shape[1])[None, :] % 5 < 2)
    crack = cracked & grid & ndi.binary_erosion(cracked, iterations=4)  # 2 x 2 px holes, 3 px apart
    assert fg[cracked & ~crack].sum() / cracked.sum() < 0.9
    fg[crack] = 0.0
    kept = labels_from_maps(fg, dist, params=PostprocessParams(min_score=0.9))
    assert kept.max() == 7 and kept[250, 100] > 0
    assert (kept[crack] == kept[250, 100]).all()


def test_exactly_one_second_map_required():
    fg = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        labels_from_maps(fg)
    with pytest.raises(ValueError, match="exactly one"):
        labels_from_maps(fg, fg, boundary_prob=fg)


def test_round_trip_on_synthetic_electrode_fields_keeps_broken_particles_whole():
    from fracscope import synth
    cfg = synth.load_config(preset="p", overrides=["electrode.field_px=[384,512]", "damage=[0.2,0.3,0.5]"])
    tp = fp = fn = 0
    n_broken = 0
    for index in range(3):
        item = synth.make_field(cfg, 7, index)
        fg, dist = maps_from_labels(item.instances)
        labels = labels_from_maps(fg, dist)
        m = match_instances(item.instances, labels, iou=0.8)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        matched = {g for g, _ in m.pairs}
        broken = [p.particle_id for p in item.particles if p.class_name == "broken"]
        n_broken += len(broken)
        # Fragments and cracks included, each broken particle is one predicted instance.
        assert set(broken) <= matched
    assert n_broken >= 2
    assert tp >= 0.95 * (tp + fn) and fp <= 0.05 * (tp + fp) + 1, (tp, fp, fn)


@pytest.mark.parametrize("distance", [1, 2, 3, 5])
def test_grow_labels_equals_skimage_expand_labels(distance):
    from skimage.segmentation import expand_labels

    from fracscope.detect.postprocess import grow_labels

    rng = np.random.default_rng(distance)
    noise = ndi.gaussian_filter(rng.standard_normal((300, 400)), 6)
    labels = ndi.label(noise > 0.02)[0].astype(np.uint32)
    labels[rng.random(labels.shape) < 0.05] = 0  # holes inside objects, as a coarse label map has
    grown = grow_labels(labels, distance)
    ref = expand_labels(labels, distance=distance)
    assert grown.dtype == labels.dtype
    np.testing.assert_array_equal(grown > 0, ref > 0)  # the same pixels are reached
    differ = np.argwhere(grown != ref)
    assert len(differ) <= 1e-3 * labels.size  # only where two objects are (nearly) equally near
    for r, c in differ:  # ... and then both answers are (nearly) equally near
        d = [ndi.distance_transform_edt(labels != lab)[r, c] for lab in (grown[r, c], ref[r, c])]
        assert abs(d[0] - d[1]) < 0.5
    assert not grow_labels(np.zeros((5, 5), np.uint32), 3).any()
