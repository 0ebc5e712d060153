"""3-D pore analysis (fracscope.pores3d): exact answers on generated volumes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from fracscope.model_file import ModelMetadata
from fracscope.pores3d import ArrayStack, StackError, VoxelSize, analyse_stack, label_chunked, open_stack, structure
from fracscope.pores3d.align import AlignedStack, estimate_drift
from fracscope.pores3d.label import ChunkedLabeler
from fracscope.pores3d.measure import (
    ParticleAccumulator,
    PoreAccumulator,
    ShellAccumulator,
    outside_neighbours,
    size_distribution,
)
from fracscope.pores3d.run import PoreSettings, Settings, min_voxels
from fracscope.pores3d.segment import ModelVoids, SegmentSettings, decide_pore_polarity, stack_threshold
from fracscope.pores3d.synth import (
    Imaging,
    PorePopulation,
    StackRenderer,
    phantom_with_pores,
    random_phantom,
)
from fracscope.io import write_volume_tiff
from fracscope.types import Phase

REPO = Path(__file__).resolve().parents[1]

# Anisotropic FIB-SEM-like voxels: 40 nm slices, 20 nm pixels; one voxel is 1.6e-5 µm³,
# so the paper's 0.002 µm³ noise threshold is 125 voxels.
VOXEL = (0.04, 0.02, 0.02)
SHAPE = (40, 96, 96)
PARTICLE_RADII = (0.7, 0.85, 0.8)
# (offset from the particle centre, semi-axes), µm. Voxel counts (from the phantom):
# 2128, 216, 236, 124 (one voxel below the threshold), 716, 32, 64, 80.
PORES = [
    ((0.0, 0.0, 0.0), (0.2, 0.2, 0.2)),
    ((0.0, 0.45, 0.0), (0.08, 0.1, 0.1)),
    ((0.0, -0.45, 0.1), (0.1, 0.12, 0.08)),
    ((0.3, 0.0, 0.45), (0.08, 0.08, 0.08)),
    ((-0.35, 0.0, -0.4), (0.12, 0.15, 0.15)),
    ((0.0, 0.3, -0.4), (0.05, 0.05, 0.05)),
    ((-0.3, -0.3, 0.3), (0.06, 0.06, 0.06)),
    ((0.35, -0.2, -0.2), (0.07, 0.07, 0.07)),
]
FAST = Settings(write_labels=False, plots=False)


@pytest.fixture(scope="module")
def phantom():
    return phantom_with_pores(SHAPE, VOXEL, PARTICLE_RADII, PORES)


@pytest.fixture(scope="module")
def truth(phantom):
    body, ids = phantom.truth()
    return body, ids


def _truth_pores(body, ids, voxel, min_vox):
    """Expected per-pore voxel counts and centroids (µm), and the particle centre and radius."""
    counts = np.bincount(ids.ravel())[1:]
    kept = np.flatnonzero(counts >= min_vox) + 1
    zyx = np.asarray(voxel)
    centroids = np.array([np.argwhere(ids == k).mean(axis=0) * zyx for k in kept])
    centre = np.argwhere(body).mean(axis=0) * zyx
    radius = np.cbrt(3.0 * body.sum() * np.prod(zyx) / (4.0 * math.pi))
    return counts[kept - 1], centroids, centre, radius


def _by_position(table):
    order = np.lexsort((table["centroid_x_um"], table["centroid_y_um"], table["centroid_z_um"]))
    return {k: np.asarray(v)[order] for k, v in table.items()}


def _clean_volume(body: np.ndarray, pores: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """Grey levels without texture or noise: outside 40, solid 180, pores 20."""
    vol = np.full(body.shape, 40, dtype)
    vol[body] = 180
    vol[pores] = 20
    return vol


# --- chunked labelling -------------------------------------------------------------------


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_chunked_labels_equal_scipy_for_any_chunk_size(connectivity):
    rng = np.random.default_rng(connectivity)
    mask = rng.random((30, 37, 41)) < 0.3  # near percolation: components snake across many chunks
    ref, n = ndi.label(mask, structure(connectivity))
    for chunk_z in (1, 2, 7, 30):
        labels, merge = label_chunked(mask, connectivity, chunk_z)
        np.testing.assert_array_equal(labels, ref)  # identical numbering, not just a permutation
        assert merge.n == n
    # With a size filter: scipy's labels, small ones removed, renumbered in order.
    sizes = np.bincount(ref.ravel())
    keep = sizes >= 5
    keep[0] = False
    lut = np.zeros(n + 1, np.uint32)
    lut[keep] = np.arange(1, keep.sum() + 1)
    for chunk_z in (1, 4):
        labels, merge = label_chunked(mask, connectivity, chunk_z, min_voxels=5)
        np.testing.assert_array_equal(labels, lut[ref])
        assert merge.n_dropped == int((~keep[1:]).sum())
        assert merge.dropped_voxels == int(sizes[1:][~keep[1:]].sum())


def test_a_pore_crossing_chunk_faces_is_merged_not_split():
    # A U: two columns joined only at the bottom, so every chunk above sees two pieces.
    mask = np.zeros((12, 5, 9), bool)
    mask[:, 2, 1] = True
    mask[:, 2, 7] = True
    mask[-1, 2, 1:8] = True
    labels, merge = label_chunked(mask, 6, chunk_z=1)
    assert merge.n == 1 and merge.counts[1] == mask.sum()
    assert set(np.unique(labels)) == {0, 1}


@pytest.mark.parametrize("offset, joined", [((0, 0), (6, 18, 26)), ((0, 1), (18, 26)), ((1, 1), (26,))])
def test_connectivity_across_a_chunk_face(offset, joined):
    mask = np.zeros((2, 4, 4), bool)
    mask[0, 1, 1] = True
    mask[1, 1 + offset[0], 1 + offset[1]] = True
    for connectivity in (6, 18, 26):
        _, merge = label_chunked(mask, connectivity, chunk_z=1)
        assert merge.n == (1 if connectivity in joined else 2)


def test_labeler_refuses_chunks_out_of_order():
    lab = ChunkedLabeler((4, 3, 3))
    lab.add(0, np.zeros((2, 3, 3), bool))
    with pytest.raises(ValueError, match="in order"):
        lab.add(3, np.zeros((1, 3, 3), bool))


# --- measurements --------------------------------------------------------------------------


def test_pore_measurements_are_exact_on_boxes():
    voxel = VoxelSize(0.04, 0.01, 0.01)
    shape = (10, 20, 20)
    particle = np.zeros(shape, bool)
    particle[1:9, 2:18, 2:18] = True
    labels = np.zeros(shape, np.uint32)
    labels[3:6, 6:10, 6:11] = 1  # interior box: 3 x 4 x 5 = 60 voxels
    labels[2:4, 2:4, 12:14] = 2  # on the particle's face: open to the outside
    labels[0:2, 15:17, 15:17] = 3  # reaches the stack's first slice
    acc = ParticleAccumulator()
    acc.add(0, particle)
    geom = acc.result(voxel)
    assert geom.n_voxels == 8 * 16 * 16
    np.testing.assert_allclose(geom.centroid_um, (4.5 * 0.04, 9.5 * 0.01, 9.5 * 0.01))
    assert geom.radius_um == pytest.approx(np.cbrt(3 * geom.volume_um3 / (4 * math.pi)))
    pores = PoreAccumulator(3, shape)
    # Stream in two chunks with a one-slice halo, as the pipeline does.
    st = structure(6)
    for z0, z1 in ((0, 4), (4, 10)):
        h0, h1 = max(z0 - 1, 0), min(z1 + 1, shape[0])
        block = labels[z0:z1]
        pores.add(z0, block, outside_neighbours(block > 0, particle[h0:h1], z0 - h0, st))
    t = pores.table(voxel, geom)
    np.testing.assert_array_equal(t["n_voxels"], [60, 8, 8])
    np.testing.assert_allclose(t["volume_um3"], np.array([60, 8, 8]) * 0.04 * 0.01 * 0.01, rtol=1e-12)
    np.testing.assert_allclose(t["eq_diameter_um"], np.cbrt(6 * t["volume_um3"] / math.pi))
    np.testing.assert_allclose([t["centroid_z_um"][0], t["centroid_y_um"][0], t["centroid_x_um"][0]],
                               [4 * 0.04, 7.5 * 0.01, 8 * 0.01])
    dist = math.dist((4 * 0.04, 7.5 * 0.01, 8 * 0.01), geom.centroid_um)
    assert t["r_rel"][0] == pytest.approx(dist / geom.radius_um)
    np.testing.assert_array_equal(t["touches_outside"], [False, True, True])
    np.testing.assert_array_equal(t["touches_border"], [False, False, True])
    np.testing.assert_array_equal([t["bbox_z0"][0], t["bbox_z1"][0], t["bbox_x0"][0], t["bbox_x1"][0]], [3, 6, 6, 11])


def test_radial_shells_count_voxels_by_distance():
    voxel = VoxelSize(1.0, 1.0, 1.0)
    zz, yy, xx = np.indices((21, 21, 21))
    d = np.sqrt((zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2)
    particle = d <= 9.5
    acc = ParticleAccumulator()
    acc.add(0, particle)
    geom = acc.result(voxel)
    pores = particle & (d <= 3)
    shells = ShellAccumulator((0.5, 1.0), geom, voxel)
    shells.add(0, particle[:7], pores[:7], pores[:7])  # chunks add up
    shells.add(7, particle[7:], pores[7:], pores[7:])
    r = shells.result()
    R = geom.radius_um
    inner = particle & (d <= 0.5 * R)
    assert r.particle_voxels == (int(inner.sum()), int((particle & (d > 0.5 * R) & (d <= R)).sum()),
                                 int((particle & (d > R)).sum()))
    assert r.pore_voxels[0] == int(pores.sum()) and r.pore_voxels[1:] == (0, 0)
    assert r.sphere_pct[0] == pytest.approx(100 * pores.sum() / inner.sum())
    assert r.sphere_pct[1] == pytest.approx(100 * pores.sum() / (particle & (d <= R)).sum())


def test_size_distribution_in_the_papers_bins():
    v = np.array([0.0025, 0.005, 0.0099, 0.010, 0.02, 0.03, 3.779, 0.001])
    d = size_distribution(v, (0.002, 0.010, 0.030))
    assert d["labels"] == ["0.002-0.010", "0.010-0.030", ">=0.030"]
    assert d["count"] == [3, 2, 2]  # 0.001 is below the first edge: in no class
    np.testing.assert_allclose(d["count_pct"], [300 / 7, 200 / 7, 200 / 7])
    assert d["volume_um3"][2] == pytest.approx(3.809)


# --- the whole analysis on generated particles --------------------------------------------


def test_exact_pore_counts_and_volumes(phantom, truth, tmp_path):
    body, ids = truth
    stack = ArrayStack(StackRenderer(phantom, Imaging()).volume(), VoxelSize(*VOXEL))
    res = analyse_stack(stack, FAST, tmp_path)
    n_min = min_voxels(0.002, stack.voxel_size)
    assert n_min == 125
    counts, centroids, centre, radius = _truth_pores(body, ids, VOXEL, n_min)
    assert len(counts) == 4  # the 124-voxel pore is one voxel short of 0.002 µm³
    assert res.n_pores == 4
    assert res.summary["n_noise_voids"] == 4
    assert res.particle.n_voxels == body.sum()
    t = _by_position(res.table)
    order = np.lexsort((centroids[:, 2], centroids[:, 1], centroids[:, 0]))
    np.testing.assert_array_equal(t["n_voxels"], counts[order])
    np.testing.assert_allclose(t["volume_um3"], counts[order] * 1.6e-5, rtol=1e-12)
    np.testing.assert_allclose(np.stack([t[f"centroid_{a}_um"] for a in "zyx"], 1), centroids[order], atol=1e-12)
    np.testing.assert_allclose(res.particle.centroid_um, centre, atol=1e-12)
    np.testing.assert_allclose(t["r_rel"], np.linalg.norm(centroids[order] - centre, axis=1) / radius, rtol=1e-9)
    assert not t["touches_outside"].any() and not t["touches_border"].any()
    assert res.porosity_pct == pytest.approx(100 * counts.sum() / body.sum(), rel=1e-12)
    all_voids = np.count_nonzero(ids)
    assert res.summary["porosity_all_voids_pct"] == pytest.approx(100 * all_voids / body.sum(), rel=1e-12)
    assert res.summary["distribution"]["count"] == [2, 1, 1]
    assert res.summary["largest_pores"][0]["volume_um3"] == pytest.approx(2128 * 1.6e-5)
    assert res.summary["largest_pores"][0]["r_rel"] < 0.05


def test_noise_threshold_is_a_setting(tmp_path):
    # Voxels of 0.05 µm: 0.002 µm³ is exactly 16 voxels.
    shape = (16, 32, 32)
    body = np.zeros(shape, bool)
    body[2:14, 3:29, 3:29] = True
    pores = np.zeros(shape, bool)
    pores[5:7, 8:10, 8:12] = True  # 16 voxels = 0.002 µm³: kept
    pores[5:8, 16:21, 8] = True  # 15 voxels: noise
    pores[9:11, 8:10, 16:20] = True
    pores[9, 10, 16] = True  # 17 voxels: kept
    stack = ArrayStack(_clean_volume(body, pores), VoxelSize(0.05, 0.05, 0.05))
    res = analyse_stack(stack, FAST, tmp_path / "a")
    assert sorted(res.table["n_voxels"]) == [16, 17]
    assert res.summary["n_noise_voids"] == 1 and res.summary["noise_voxels"] == 15
    higher = Settings(write_labels=False, plots=False, pores=PoreSettings(min_volume_um3=0.0021))
    res = analyse_stack(stack, higher, tmp_path / "b")
    assert list(res.table["n_voxels"]) == [17]
    keep_all = Settings(write_labels=False, plots=False, pores=PoreSettings(min_volume_um3=0.0))
    assert analyse_stack(stack, keep_all, tmp_path / "c").n_pores == 3


def test_anisotropic_voxels_scale_volumes_and_distances(phantom, truth, tmp_path):
    body, ids = truth
    volume = StackRenderer(phantom, Imaging()).volume()
    iso = analyse_stack(ArrayStack(volume, VoxelSize(0.01, 0.01, 0.01)), Settings(
        write_labels=False, plots=False, pores=PoreSettings(min_volume_um3=0.0)), tmp_path / "iso")
    aniso = analyse_stack(ArrayStack(volume, VoxelSize(0.04, 0.01, 0.01)), Settings(
        write_labels=False, plots=False, pores=PoreSettings(min_volume_um3=0.0)), tmp_path / "aniso")
    assert iso.n_pores == aniso.n_pores == len(PORES)
    np.testing.assert_array_equal(iso.table["n_voxels"], aniso.table["n_voxels"])
    np.testing.assert_allclose(aniso.table["volume_um3"], 4 * iso.table["volume_um3"], rtol=1e-12)
    np.testing.assert_allclose(aniso.table["centroid_z_um"], 4 * iso.table["centroid_z_um"], rtol=1e-12)
    np.testing.assert_allclose(aniso.table["centroid_y_um"], iso.table["centroid_y_um"], rtol=1e-12)
    # r_rel measured in µm, so stretching z moves pores off the z axis relatively further out.
    for res, zyx in ((iso, (0.01, 0.01, 0.01)), (aniso, (0.04, 0.01, 0.01))):
        counts, centroids, centre, radius = _truth_pores(body, ids, zyx, 0)
        t = _by_position(res.table)
        order = np.lexsort((centroids[:, 2], centroids[:, 1], centroids[:, 0]))
        np.testing.assert_allclose(t["r_rel"], np.linalg.norm(centroids[order] - centre, axis=1) / radius, rtol=1e-9)
    assert not np.allclose(iso.table["r_rel"], aniso.table["r_rel"])


def test_open_pore_touches_the_outside(tmp_path):
    # A pore cut by the particle surface; the 0.2 µm closing bridges its ~0.2 µm wide mouth.
    ph = phantom_with_pores(SHAPE, VOXEL, PARTICLE_RADII,
                            [((0.0, 0.0, 0.0), (0.2, 0.2, 0.2)), ((0.0, 0.0, 0.75), (0.12, 0.1, 0.1))])
    stack = ArrayStack(StackRenderer(ph, Imaging()).volume(), VoxelSize(*VOXEL))
    res = analyse_stack(stack, FAST, tmp_path)
    t = res.table
    assert res.n_pores == 2
    centre_pore = int(np.argmax(t["volume_um3"]))
    assert not t["touches_outside"][centre_pore]
    assert t["touches_outside"][1 - centre_pore]
    assert res.summary["n_open_pores"] == 1
    assert res.summary["open_porosity_pct"] > 0


def test_chunked_run_equals_unchunked(phantom, tmp_path):
    volume = StackRenderer(phantom, Imaging(noise_sd=0.02, blur_px=0.7), seed=3).volume()
    stack = ArrayStack(volume, VoxelSize(*VOXEL))
    whole = analyse_stack(stack, Settings(plots=False, chunk_mb=1e3), tmp_path / "whole")
    # One slice per chunk, scratch arrays memory-mapped on disk.
    sliced = analyse_stack(stack, Settings(plots=False, chunk_mb=1e-6, in_memory_mb=0.0), tmp_path / "sliced")
    assert whole.n_pores == sliced.n_pores > 0
    for key in whole.table:
        np.testing.assert_array_equal(whole.table[key], sliced.table[key])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "whole" / "labels.tif"),
                                  tifffile.imread(tmp_path / "sliced" / "labels.tif"))
    assert not (tmp_path / "sliced" / ".work").exists()  # scratch files removed


def test_label_volume_opens_with_its_voxel_size(phantom, truth, tmp_path):
    body, ids = truth
    stack = ArrayStack(StackRenderer(phantom, Imaging()).volume(), VoxelSize(*VOXEL))
    res = analyse_stack(stack, Settings(plots=False), tmp_path)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        labels = tif.asarray()
        assert tif.is_imagej and tif.imagej_metadata["spacing"] == pytest.approx(0.04)
        assert tif.imagej_metadata["unit"] == "um"
    assert labels.dtype == np.uint16 and labels.shape == SHAPE
    np.testing.assert_array_equal(np.bincount(labels.ravel())[1:], res.table["n_voxels"])
    # Same voxels as the truth's kept pores.
    counts = np.bincount(ids.ravel())
    kept = np.flatnonzero(counts[1:] >= 125) + 1
    np.testing.assert_array_equal(labels > 0, np.isin(ids, kept))
    reopened = open_stack(tmp_path / "labels.tif")
    assert reopened.voxel_size.zyx == pytest.approx(VOXEL) and reopened.voxel_size.source == "imagej"
    reopened.close()


def test_keep_largest_drops_a_neighbouring_particle(phantom, tmp_path):
    volume = StackRenderer(phantom, Imaging()).volume()
    volume[2:8, 2:10, 2:10] = 180  # a fragment of another particle in the corner, with a pore
    volume[4:6, 5:7, 5:7] = 20
    stack = ArrayStack(volume, VoxelSize(*VOXEL))
    one = analyse_stack(stack, Settings(write_labels=False, plots=False,
                                        pores=PoreSettings(min_volume_um3=0.0)), tmp_path / "one")
    both = analyse_stack(stack, Settings(write_labels=False, plots=False, pores=PoreSettings(min_volume_um3=0.0),
                                         segment=SegmentSettings(keep_largest=False)), tmp_path / "both")
    assert one.n_pores == len(PORES) and both.n_pores == len(PORES) + 1
    assert both.particle.n_voxels == one.particle.n_voxels + 6 * 8 * 8


def test_bright_pores_and_16_bit(phantom, tmp_path):
    img = Imaging(bit_depth=16, pore_polarity="bright")
    volume = StackRenderer(phantom, img).volume()
    assert volume.dtype == np.uint16
    res = analyse_stack(ArrayStack(volume, VoxelSize(*VOXEL)),
                        Settings(write_labels=False, plots=False, segment=SegmentSettings(pore_polarity="bright")),
                        tmp_path)
    assert sorted(res.table["n_voxels"]) == [216, 236, 716, 2128]


# --- pore polarity: auto ------------------------------------------------------------------

_SMALL_POP = PorePopulation(central_um3=(0.05, 0.02), porosity_pct=8.0)


def _polarity_stack(polarity: str, fill: float, seed: int = 0, noise_sd: float = 0.0) -> ArrayStack:
    voxel = (0.04, 0.02, 0.02)
    ph = random_phantom((24, 64, 64), voxel, seed=seed, population=_SMALL_POP, particle_fill=fill)
    img = Imaging(pore_polarity=polarity, noise_sd=noise_sd, blur_px=0.8 if noise_sd else 0.0)
    return ArrayStack(StackRenderer(ph, img, seed=seed).volume(), VoxelSize(*voxel))


@pytest.mark.parametrize("polarity", ["dark", "bright"])
@pytest.mark.parametrize("fill, noise_sd", [(0.92, 0.0), (0.92, 0.06), (0.5, 0.0), (1.3, 0.0)])
def test_auto_decides_the_stacks_pore_polarity(polarity, fill, noise_sd):
    """Fill 0.5: most of the stack is outside (pore-space grey); 1.3: the particle fills the field."""
    stack = _polarity_stack(polarity, fill, noise_sd=noise_sd)
    assert decide_pore_polarity(stack, stack_threshold(stack, 24).value) == polarity


def test_a_field_filling_particle_with_a_more_porous_core_keeps_its_polarity():
    """A core with more pores than the rim (14 % of the centre against 5 % of the border band) does not
    make the pores the centre's solid; with the contrast inverted the decision inverts."""
    rng = np.random.default_rng(0)
    vol = np.full((8, 64, 64), 180, np.uint8)
    vol[:, 26:38, 26:38] = 20                       # a porous core: 144 of the centre's 1024 pixels
    ring = np.ones((64, 64), bool)
    ring[8:56, 8:56] = False
    edge = np.argwhere(ring)
    picked = edge[rng.choice(len(edge), 90, replace=False)]  # 5 % pores in the border band
    vol[:, picked[:, 0], picked[:, 1]] = 20
    voxel = VoxelSize(0.04, 0.02, 0.02)
    assert decide_pore_polarity(ArrayStack(vol, voxel), 100.0) == "dark"
    assert decide_pore_polarity(ArrayStack(255 - vol, voxel), 155.0) == "bright"


def test_auto_is_the_default_and_equals_the_forced_polarity_end_to_end(phantom, tmp_path):
    volume = StackRenderer(phantom, Imaging(pore_polarity="bright")).volume()
    stack = ArrayStack(volume, VoxelSize(*VOXEL))
    assert SegmentSettings().pore_polarity == "auto"
    auto = analyse_stack(stack, FAST, tmp_path / "auto")
    forced = analyse_stack(stack, Settings(write_labels=False, plots=False,
                                           segment=SegmentSettings(pore_polarity="bright")), tmp_path / "bright")
    wrong = analyse_stack(stack, Settings(write_labels=False, plots=False,
                                          segment=SegmentSettings(pore_polarity="dark")), tmp_path / "dark")
    assert auto.porosity_pct == forced.porosity_pct and auto.n_pores == forced.n_pores == 4
    assert wrong.porosity_pct != forced.porosity_pct  # forcing still forces
    seg = json.loads((tmp_path / "auto" / "summary.json").read_text())["segmentation"]
    assert seg["pore_polarity"] == "bright" and seg["pore_polarity_setting"] == "auto"
    seg = json.loads((tmp_path / "dark" / "summary.json").read_text())["segmentation"]
    assert seg["pore_polarity"] == "dark" and seg["pore_polarity_setting"] == "dark"


def test_an_unknown_pore_polarity_is_refused():
    with pytest.raises(ValueError, match="pore_polarity"):
        SegmentSettings(pore_polarity="grey")


def test_local_threshold_follows_shading_that_defeats_a_global_one(column, tmp_path):
    body, ids = column.truth()
    # Brightness drifts from slice to slice (x0.55 .. x1.45, charging) and rises across each
    # slice: the dark slices' solid is darker than the bright slices' embedding.
    gain = np.linspace(0.55, 1.45, SHAPE[0])[:, None, None]
    ramp = np.linspace(0.0, 0.15, SHAPE[2])[None, None, :]
    vol = gain * np.where(ids > 0, 0.1, np.where(body, 0.5, 0.15)) + ramp
    vol = np.round(np.clip(vol, 0, 1) * 255).astype(np.uint8)
    stack = ArrayStack(vol, VoxelSize(*VOXEL))
    local = analyse_stack(stack, Settings(write_labels=False, plots=False,
                                          segment=SegmentSettings(method="local", local_window_um=0.3)),
                          tmp_path / "local")
    assert sorted(local.table["n_voxels"]) == [216, 236, 716, 2128]
    assert local.particle.n_voxels == body.sum()
    glob = analyse_stack(stack, FAST, tmp_path / "global")
    assert glob.particle.n_voxels < 0.9 * body.sum()


class _FakeBackend:
    """Stands in for an ONNX model: every pixel of every crop is one phase."""

    metadata = ModelMetadata(crop_size=32, margin=0.15)

    def __init__(self, phase: int) -> None:
        self.phase = phase
        self.calls = 0

    def predict_batched(self, x, batch_size):
        self.calls += 1
        probs = np.zeros((len(x), 4, 32, 32), np.float32)
        probs[:, self.phase] = 1.0
        return np.zeros((len(x), 3), np.float32), probs


def test_model_segmentation_replaces_voids_inside_the_section(phantom, truth, tmp_path):
    body, _ = truth
    stack = ArrayStack(StackRenderer(phantom, Imaging()).volume(), VoxelSize(*VOXEL))
    settings = Settings(write_labels=False, plots=False, segment=SegmentSettings(method="model"))
    solid = _FakeBackend(1)
    res = analyse_stack(stack, settings, tmp_path / "solid", model=ModelVoids(solid, batch_size=8))
    assert res.n_pores == 0 and res.particle.n_voxels == body.sum() and solid.calls > 0
    res = analyse_stack(stack, settings, tmp_path / "pore", model=ModelVoids(_FakeBackend(2)))
    assert res.n_pores == 1 and res.porosity_pct == pytest.approx(100.0)


class _RecordingBackend(_FakeBackend):
    """Every crop pixel solid; keeps the crop images it was given."""

    def __init__(self) -> None:
        super().__init__(Phase.SOLID)
        self.images: list[np.ndarray] = []

    def predict_batched(self, x, batch_size):
        self.images.extend(x[:, 0])
        return super().predict_batched(x, batch_size)


def test_a_bright_pore_stack_reaches_the_model_with_its_fill_darkened(phantom, truth, tmp_path):
    """As in 2-D (`fracscope.polarity.fill_darkened`): Pt-filled pores and embedding, brighter than the
    solid in the stack, are darker than it in what the model sees; with dark pores the slice is unchanged."""
    body, ids = truth
    volume = StackRenderer(phantom, Imaging(pore_polarity="bright")).volume()
    settings = Settings(write_labels=False, plots=False, segment=SegmentSettings(method="model", pore_polarity="bright"))
    seen = {}
    for polarity in ("bright", "dark"):
        backend = _RecordingBackend()
        analyse_stack(ArrayStack(volume, VoxelSize(*VOXEL)), settings, tmp_path / polarity,
                      model=ModelVoids(backend, pore_polarity=polarity))
        seen[polarity] = backend.images
    # Under auto (the default) `run` builds the model before the stack is read; it gets the stack's decision.
    backend = _RecordingBackend()
    auto = Settings(write_labels=False, plots=False, segment=SegmentSettings(method="model"))
    analyse_stack(ArrayStack(volume, VoxelSize(*VOXEL)), auto, tmp_path / "auto",
                  model=ModelVoids(backend, pore_polarity="auto"))
    assert len(backend.images) == len(seen["bright"])
    assert all(np.array_equal(a, b) for a, b in zip(backend.images, seen["bright"]))
    z = int(np.argmax((ids > 0).sum(axis=(1, 2))))  # the slice with most pore voxels
    sl = volume[z]
    solid, pore = body[z] & (ids[z] == 0), ids[z] > 0
    assert sl[pore].mean() > sl[solid].mean()  # rendered bright
    from fracscope.pores3d.segment import model_view

    phases = np.where(solid | pore, Phase.SOLID, 0).astype(np.uint8)
    view = model_view(sl, phases, "bright")
    assert view[pore].mean() < view[solid].mean() and view[~body[z]].mean() < view[solid].mean()
    assert model_view(sl, phases, "dark") is sl
    # The crops the model got differ between the two settings (darkened fill against the raw slice).
    assert len(seen["bright"]) == len(seen["dark"]) > 0
    assert not all(np.allclose(a, b) for a, b in zip(seen["bright"], seen["dark"]))


class _UnsureBackend(_FakeBackend):
    """Every crop pixel: solid 0.55, pore 0.45; ``pore_weight`` in the metadata when given."""

    def __init__(self, pore_weight: float | None = None) -> None:
        super().__init__(Phase.SOLID)
        extra = {} if pore_weight is None else {"pore_weight": pore_weight}
        self.metadata = ModelMetadata(crop_size=32, margin=0.15, **extra)

    def predict_batched(self, x, batch_size):
        classes, probs = super().predict_batched(x, batch_size)
        probs[:, Phase.SOLID], probs[:, Phase.PORE] = 0.55, 0.45
        return classes, probs


def test_model_segmentation_applies_the_pore_weight(phantom, truth, tmp_path):
    """As in the 2-D pipeline: the model file's pore weight (or an override) scales the pore probability."""
    stack = ArrayStack(StackRenderer(phantom, Imaging()).volume(), VoxelSize(*VOXEL))
    settings = Settings(write_labels=False, plots=False, segment=SegmentSettings(method="model"))
    plain, weighted = _UnsureBackend(), _UnsureBackend(pore_weight=1.3)
    assert ModelVoids(plain).pore_weight == 1.0  # no weight in the file
    assert analyse_stack(stack, settings, tmp_path / "plain", model=ModelVoids(plain)).n_pores == 0
    res = analyse_stack(stack, settings, tmp_path / "file", model=ModelVoids(weighted))
    assert res.porosity_pct == pytest.approx(100.0)
    res = analyse_stack(stack, settings, tmp_path / "override", model=ModelVoids(weighted, pore_weight=1.0))
    assert res.n_pores == 0
    with pytest.raises(ValueError, match="pore_weight"):
        ModelVoids(plain, pore_weight=0)


# --- alignment -------------------------------------------------------------------------------


# The embedding has a faint texture too, so blank slices can be registered.
TEXTURED = dict(outside_texture_sd=0.03)


@pytest.fixture(scope="module")
def column():
    """A stack cut from inside a particle, as FIB-SEM stacks often are: every slice has texture and
    consecutive slices differ little (at the small phantom's caps they differ by many pixels)."""
    return phantom_with_pores(SHAPE, VOXEL, (2.0, 0.85, 0.8), PORES)


def test_alignment_recovers_a_known_whole_pixel_drift(column):
    drifted = StackRenderer(column, Imaging(drift_px_sd=0.7, **TEXTURED), seed=2)
    m = int(np.abs(drifted.drift_px).max())
    assert m >= 5
    stack = ArrayStack(drifted.volume(), VoxelSize(*VOXEL))
    shifts = estimate_drift(stack, chunk_z=7)
    np.testing.assert_array_equal(shifts, -drifted.drift_px)
    still = drifted.volume(drifted=False)
    aligned = AlignedStack(stack, shifts).read(0, SHAPE[0])
    # Identical except for the border the drift uncovered (filled with edge values).
    np.testing.assert_array_equal(aligned[:, m:-m, m:-m], still[:, m:-m, m:-m])


def test_alignment_below_a_pixel(column):
    drifted = StackRenderer(column, Imaging(drift_px_sd=0.7, drift_whole_px=False, **TEXTURED), seed=2)
    shifts = estimate_drift(ArrayStack(drifted.volume(), VoxelSize(*VOXEL)), upsample_factor=10)
    error = shifts + drifted.drift_px
    assert np.abs(np.diff(error, axis=0)).max() <= 0.3  # slice to slice
    assert np.abs(error).max() <= 1.0  # the slice-to-slice errors add up over the 40 slices


def test_a_step_beyond_max_step_is_not_believed():
    first = ndi.gaussian_filter(np.random.default_rng(0).random((64, 64)), 2)
    vol = np.round(255 * np.stack([first, np.roll(first, 20, axis=1)]) / first.max()).astype(np.uint8)
    stack = ArrayStack(vol, VoxelSize(1, 1, 1))
    np.testing.assert_array_equal(estimate_drift(stack, max_step_px=30)[1], [0, -20])
    np.testing.assert_array_equal(estimate_drift(stack, max_step_px=10)[1], [0, 0])


def test_a_blank_slice_adds_no_shift():
    vol = np.zeros((4, 32, 32), np.uint8)
    vol[2:] = np.random.default_rng(0).integers(0, 255, (32, 32))  # blank, blank, then the same image
    np.testing.assert_array_equal(estimate_drift(ArrayStack(vol, VoxelSize(1, 1, 1))), np.zeros((4, 2)))


def test_aligned_run_equals_the_run_without_drift(column, tmp_path):
    # Drift up to 4 px: the particle stays inside the field (5 px margin), so nothing is lost.
    renderer = StackRenderer(column, Imaging(drift_px_sd=0.7, **TEXTURED), seed=0)
    drifted, still = renderer.volume(), renderer.volume(drifted=False)
    from fracscope.pores3d.run import AlignSettings

    res_a = analyse_stack(ArrayStack(drifted, VoxelSize(*VOXEL)),
                          Settings(write_labels=False, plots=False, align=AlignSettings(enabled=True)), tmp_path / "a")
    res_b = analyse_stack(ArrayStack(still, VoxelSize(*VOXEL)), FAST, tmp_path / "b")
    assert res_a.n_pores == 4
    for key in res_b.table:
        np.testing.assert_array_equal(res_a.table[key], res_b.table[key])
    assert (tmp_path / "a" / "shifts.csv").is_file()


# --- reading stacks -------------------------------------------------------------------------


def _write_imagej(path, volume, voxel=(0.02, 0.005, 0.005)):
    write_volume_tiff(path, iter(volume), volume.shape, volume.dtype, voxel)
    return path


def test_voxel_size_from_imagej_metadata_and_overrides(tmp_path):
    vol = np.zeros((5, 16, 24), np.uint8)
    path = _write_imagej(tmp_path / "s.tif", vol)
    with open_stack(path) as s:
        assert s.voxel_size.zyx == pytest.approx((0.02, 0.005, 0.005)) and s.voxel_size.source == "imagej"
        assert s.shape == (5, 16, 24)
    with open_stack(path, slice_spacing_um=0.03) as s:
        assert s.voxel_size.zyx == pytest.approx((0.03, 0.005, 0.005))
        assert s.voxel_size.source == "imagej+slice_spacing_um"
    with open_stack(path, voxel_size_um=[0.1, 0.2, 0.3]) as s:
        assert s.voxel_size.zyx == (0.1, 0.2, 0.3) and s.voxel_size.source == "override"
    # uint32 volumes go to OME-TIFF with PhysicalSize*.
    ome = tmp_path / "l.tif"
    write_volume_tiff(ome, iter(vol.astype(np.uint32)), vol.shape, np.uint32, (0.02, 0.01, 0.01))
    with open_stack(ome) as s:
        assert s.voxel_size.zyx == pytest.approx((0.02, 0.01, 0.01)) and s.voxel_size.source == "ome"


def test_memory_mapped_and_page_by_page_reads_agree(tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (9, 20, 30), dtype=np.uint8)
    plain = _write_imagej(tmp_path / "plain.tif", vol)
    packed = tmp_path / "zlib.tif"
    write_volume_tiff(packed, iter(vol), vol.shape, vol.dtype, (0.02, 0.01, 0.01), compression="zlib")
    with open_stack(plain) as a, open_stack(packed) as b:
        assert a._mm is not None and b._mm is None
        np.testing.assert_array_equal(a.read(2, 7), vol[2:7])
        np.testing.assert_array_equal(b.read(2, 7), vol[2:7])


def test_unknown_slice_spacing_is_an_error_not_a_guess(tmp_path):
    path = tmp_path / "nometa.tif"
    tifffile.imwrite(path, np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(StackError, match="voxel_size_um"):
        open_stack(path)
    with open_stack(path, voxel_size_um=0.01) as s:
        assert s.voxel_size.zyx == (0.01, 0.01, 0.01)


@pytest.mark.parametrize("imagej", [True, False])
def test_truncated_stack_gives_a_clear_error(tmp_path, imagej):
    vol = np.random.default_rng(1).integers(0, 255, (20, 32, 40), dtype=np.uint8)
    full = tmp_path / "full.tif"
    if imagej:
        _write_imagej(full, vol)
    else:
        tifffile.imwrite(full, vol)
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(StackError, match="truncated"):
        open_stack(cut, voxel_size_um=0.01)


def test_folder_of_slices_in_natural_order(tmp_path):
    vol = np.arange(12, dtype=np.uint8)[:, None, None] * np.ones((1, 6, 7), np.uint8)
    for z in range(12):
        tifffile.imwrite(tmp_path / f"slice_{z}.tif", vol[z])  # slice_10 sorts after slice_9
    with open_stack(tmp_path, voxel_size_um=[0.02, 0.01, 0.01]) as s:
        assert s.shape == (12, 6, 7)
        np.testing.assert_array_equal(s.read(0, 12), vol)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((6, 8), np.uint8), "6 x 8 px"),
    (np.zeros((6, 7), np.uint16), "type is uint16"),
])
def test_inconsistent_slices_give_a_clear_error(tmp_path, bad, message):
    for z in range(3):
        tifffile.imwrite(tmp_path / f"s{z}.tif", np.zeros((6, 7), np.uint8))
    tifffile.imwrite(tmp_path / "s3.tif", bad)
    with pytest.raises(StackError, match=message) as err:
        open_stack(tmp_path, voxel_size_um=0.01)
    assert "s3.tif" in str(err.value)


def test_empty_folder_and_single_image_are_refused(tmp_path):
    with pytest.raises(StackError, match="no slice images"):
        open_stack(tmp_path, voxel_size_um=0.01)
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, np.zeros((8, 8), np.uint8))
    with pytest.raises(StackError, match="single 2-D image"):
        open_stack(single, voxel_size_um=0.01)
    tifffile.imwrite(tmp_path / "mixed.tif", np.zeros((8, 8), np.uint8), append=False)
    tifffile.imwrite(tmp_path / "mixed.tif", np.zeros((9, 8), np.uint8), append=True)
    with pytest.raises(StackError, match="differ in shape"):
        open_stack(tmp_path / "mixed.tif", voxel_size_um=0.01)


# --- the generator ----------------------------------------------------------------------------


def test_generated_gradient_particle_matches_the_paper_in_shape():
    pop = PorePopulation(porosity_pct=6.0, central_um3=(0.2, 0.08), class_edges_um3=(0.002, 0.01, 0.03, 0.06),
                         noise_um3=(0.0003, 0.0018))
    ph = random_phantom((80, 128, 128), (0.02, 0.02, 0.02), seed=4, population=pop)
    body, ids = ph.truth()
    counts = np.bincount(ids.ravel(), minlength=len(ph.pores) + 1)[1:]
    assert (counts > 0).all()
    # Pores never touch each other, even corner to corner, and never the outside.
    _, n = ndi.label(ids > 0, structure(26))
    assert n == len(ph.pores)
    assert not (ndi.binary_dilation(~body, structure(26)) & (ids > 0)).any()
    # Largest pore at the centre; large pores inside, small ones everywhere.
    vox = 0.02**3
    centre = np.argwhere(body).mean(0)
    radius = np.cbrt(3 * body.sum() / (4 * math.pi))
    big = int(np.argmax(counts)) + 1
    assert np.linalg.norm(np.argwhere(ids == big).mean(0) - centre) / radius < 0.05
    r_rel = np.array([np.linalg.norm(np.argwhere(ids == k + 1).mean(0) - centre) / radius for k in range(len(counts))])
    v = counts * vox
    assert r_rel[v >= 0.03].max() < r_rel[(v >= 0.002) & (v < 0.01)].max()
    assert (v < 0.002).sum() > 0  # noise specks for the threshold to remove


# --- command line ---------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, "-m", "fracscope.pores3d", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)


def test_command_line_end_to_end(phantom, tmp_path):
    volume = StackRenderer(phantom, Imaging(noise_sd=0.02, blur_px=0.6)).volume()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume)  # no calibration: the voxel size comes from the command line
    out = tmp_path / "out"
    proc = _cli(f"input={path}", f"output={out}", "voxel_size_um=[0.04,0.02,0.02]", "pores.connectivity=26")
    assert proc.returncode == 0, proc.stderr
    assert "pores >= 0.002 µm³" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["voxel_size_source"] == "override" and summary["connectivity"] == 26
    assert summary["n_pores"] == 4
    assert summary["provenance"]["config"]["pores"]["connectivity"] == 26
    for name in ("pores.csv", "pores.parquet", "labels.tif", "plots/volume_histogram.png",
                 "plots/radial_porosity.png", "plots/orthoslices.png", "plots/volume_vs_radius.png"):
        assert (out / name).is_file(), name
    import pandas as pd

    frame = pd.read_parquet(out / "pores.parquet")
    assert len(frame) == 4 and set(frame["size_class"]) <= {"0.002-0.010", "0.010-0.030", ">=0.030"}


def test_command_line_reports_a_bad_stack_in_one_line(tmp_path):
    path = tmp_path / "cut.tif"
    full = _write_imagej(tmp_path / "full.tif", np.zeros((10, 16, 16), np.uint8))
    path.write_bytes(full.read_bytes()[:3000])
    proc = _cli(f"input={path}", f"output={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert "truncated" in proc.stderr and "Traceback" not in proc.stderr


def test_config_defaults_agree_with_the_code_and_bad_settings_are_refused():
    from hydra import compose, initialize_config_dir

    from fracscope.pores3d import SettingsError, run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="pores3d")
        bad = compose(config_name="pores3d", overrides=["input=x.tif", "segment.method=magic"])
    assert Settings.from_cfg(cfg) == Settings()  # the YAML documents the real defaults
    with pytest.raises(SettingsError, match="input="):
        run(cfg)
    with pytest.raises(SettingsError, match="segment.method"):
        run(bad)


def test_a_particle_without_pores_still_reports(tmp_path):
    ph = phantom_with_pores((12, 40, 40), (0.05, 0.05, 0.05), (0.25, 0.8, 0.8), [])
    stack = ArrayStack(StackRenderer(ph, Imaging()).volume(), VoxelSize(0.05, 0.05, 0.05))
    res = analyse_stack(stack, Settings(), tmp_path)
    assert res.n_pores == 0 and res.porosity_pct == 0.0
    assert res.summary["distribution"]["count"] == [0, 0, 0] and res.summary["largest_pores"] == []
    for name in ("pores.csv", "pores.parquet", "labels.tif", "summary.json", "plots/orthoslices.png"):
        assert (tmp_path / name).is_file(), name
