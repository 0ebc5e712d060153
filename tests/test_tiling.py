"""Tests of fracscope.detect.tiling: tile grid, seam handling, oversized objects, memmaps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from fracscope.detect import ClassicalDetector, build_detector, match_instances
from fracscope.detect.base import Detector
from fracscope.detect.tiling import (
    OversizedObjectWarning,
    TiledDetector,
    TileGrid,
    detect_tiled,
    detect_tiled_report,
)
from fracscope.io import open_label_memmap, write_label_tiff
from fracscope.types import SEMImage


class BlobDetector(Detector):
    """Threshold at 0.5 + 8-connected labelling: a pure function of local pixels."""

    name = "blob"

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[int, int], float | None]] = []

    def detect(self, image: SEMImage) -> np.ndarray:
        self.seen.append((image.pixels.shape, image.pixel_size_um))
        return ndi.label(np.asarray(image.pixels) > 0.5, structure=np.ones((3, 3)))[0].astype(np.uint32)


def untiled(image: np.ndarray) -> np.ndarray:
    return BlobDetector().detect(SEMImage(image, None))


def paint_discs(shape, discs) -> np.ndarray:
    """Float image with value 1 inside each (cy, cx, r) disc."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for cy, cx, r in discs:
        img[np.hypot(yy - cy, xx - cx) <= r] = 1.0
    return img


def assert_same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """Label maps equal up to relabelling: the (a, b) label pairs form a bijection."""
    a = np.asarray(a, np.int64).ravel()
    b = np.asarray(b, np.int64).ravel()
    np.testing.assert_array_equal(a > 0, b > 0)
    pairs = np.unique(a * (b.max() + 1) + b)
    assert pairs.size == np.unique(a).size == np.unique(b).size


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [((1000, 700), 256, 64), ((256, 256), 256, 64), ((100, 90), 256, 64), ((513, 1500), 200, 99), ((300, 301), 150, 0)],
)
def test_grid_cores_partition_the_image(shape, tile, overlap):
    grid = TileGrid(shape, tile, overlap)
    cover = np.zeros(shape, np.int32)
    seen = np.zeros(shape, bool)
    for t in grid:
        r0, c0, r1, c1 = t.bbox
        k0, l0, k1, l1 = t.core
        assert 0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]
        assert r1 - r0 <= tile and c1 - c0 <= tile
        assert r0 <= k0 < k1 <= r1 and c0 <= l0 < l1 <= c1
        # The core keeps half the overlap away from every interior edge.
        top, left, bottom, right = t.overlap
        assert all(o == 0 or o >= overlap for o in t.overlap)
        assert k0 - r0 >= top // 2 and l0 - c0 >= left // 2
        assert r1 - k1 >= bottom // 2 and c1 - l1 >= right // 2
        cover[k0:k1, l0:l1] += 1
        seen[r0:r1, c0:c1] = True
    assert (cover == 1).all()
    assert seen.all()
    assert len(list(grid)) == len(grid) == grid.n_rows * grid.n_cols


def test_grid_rejects_overlap_not_below_tile():
    with pytest.raises(ValueError, match="overlap"):
        TileGrid((500, 500), 100, 100)


def test_tiled_equals_untiled_on_random_blobs(tmp_path):
    rng = np.random.default_rng(3)
    shape = (520, 730)
    discs: list[tuple[float, float, float]] = []
    while len(discs) < 150:  # separate discs, many of them cut by tile edges
        d = (rng.uniform(-10, shape[0] + 10), rng.uniform(-10, shape[1] + 10), rng.uniform(2, 25))
        if all(np.hypot(d[0] - e[0], d[1] - e[1]) > d[2] + e[2] + 2 for e in discs):
            discs.append(d)
    img = paint_discs(shape, discs)
    ref = untiled(img)
    assert ref.max() > 140
    with warnings.catch_warnings():
        warnings.simplefilter("error", OversizedObjectWarning)  # all fit the overlap
        res = detect_tiled_report(img, BlobDetector(), tile_px=160, overlap_px=60)
    assert res.oversized_ids == ()
    assert res.n_tiles > 12
    assert res.labels.dtype == np.uint32
    assert res.n_objects == ref.max() == res.labels.max()
    assert res.conflict_px == 0
    assert_same_partition(ref, res.labels)
    np.testing.assert_array_equal(np.unique(res.labels), np.arange(res.n_objects + 1))

    # The same into a label memmap on disk, then out to a tiled BigTIFF.
    out = open_label_memmap(tmp_path / "labels.npy", shape)
    got = detect_tiled(SEMImage(img, 0.05), BlobDetector(), tile_px=160, overlap_px=60, out=out)
    assert got is out
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy", mmap_mode="r"), res.labels)
    path = write_label_tiff(tmp_path / "labels.tif", out, tile_px=128)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.tilewidth == 128
        np.testing.assert_array_equal(page.asarray(), res.labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiled_equals_untiled_even_with_clusters_larger_than_the_overlap(seed):
    rng = np.random.default_rng(seed)
    shape = (450, 600)
    # Dense, elongated, fused blobs up to several tiles across.
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for _ in range(40):
        cy, cx, r, squash = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 90), rng.uniform(0.3, 1)
        img[np.hypot((yy - cy) * squash, xx - cx) < r] = 1.0
    ref = untiled(img)
    with pytest.warns(OversizedObjectWarning):
        res = detect_tiled_report(img, BlobDetector(), tile_px=128, overlap_px=40)
    assert res.stitched_ids
    assert res.n_objects == ref.max()
    assert_same_partition(ref, res.labels)


def test_objects_across_seams_and_corners_kept_once_and_whole():
    shape, tile, overlap = (600, 640), 200, 64
    grid = TileGrid(shape, tile, overlap)
    seams_r, seams_c = grid.row_seams(), grid.col_seams()
    edges_r = sorted({t.bbox[0] for t in grid} | {t.bbox[2] for t in grid} - {0, shape[0]})
    edges_c = sorted({t.bbox[1] for t in grid} | {t.bbox[3] for t in grid} - {0, shape[1]})
    assert len(seams_r) >= 2 and len(seams_c) >= 2
    discs = []
    # Centred on core seams (the tile-ownership boundary) and at seam crossings (corners).
    for r in seams_r:
        for c in seams_c:
            discs.append((r, c, 25))  # corner of four cores
            discs.append((r - 0.5, c + 0.5, 12))  # half-pixel off the corner
    for r in seams_r:
        discs.append((r, 40, 20))
    for c in seams_c:
        discs.append((40, c, 20))
    # Centred on tile edges (where naive tiling cuts them).
    for r in edges_r:
        discs.append((r, shape[1] - 30, 15))
    for c in edges_c:
        discs.append((shape[0] - 30, c, 15))
    img = paint_discs(shape, discs)
    ref = untiled(img)
    res = detect_tiled_report(img, BlobDetector(), tile_px=tile, overlap_px=overlap)
    assert res.oversized_ids == ()
    assert res.n_objects == ref.max()
    assert_same_partition(ref, res.labels)
    # Every disc is exactly one object in the tiled result, of its full area.
    for cy, cx, r in discs:
        ids = np.unique(res.labels[int(round(cy)), int(round(cx))])
        assert ids.size == 1 and ids[0] > 0
        assert np.count_nonzero(res.labels == ids[0]) == np.count_nonzero(ref == ref[int(round(cy)), int(round(cx))])


def test_objects_larger_than_the_overlap_are_flagged_and_stitched():
    shape, tile, overlap = (400, 900), 200, 40
    img = np.zeros(shape, np.float32)
    img[180:215, 30:870] = 1.0  # a bar across every column seam: no tile sees it whole
    img[60:130, 420:450] = 1.0  # 70 px tall, larger than the overlap but whole in one tile
    img[300:320, 100:125] = 1.0  # small: fine
    ref = untiled(img)
    with pytest.warns(OversizedObjectWarning, match="larger than the tile overlap"):
        res = detect_tiled_report(img, BlobDetector(), tile_px=tile, overlap_px=overlap)
    bar, tall, small = res.labels[197, 450], res.labels[95, 435], res.labels[310, 110]
    assert res.stitched_ids == (bar,)
    assert set(res.oversized_ids) == {bar, tall}
    assert small not in res.oversized_ids
    # Flagged, but not cut: the stitched bar is one object with all its pixels.
    assert res.n_objects == 3
    assert_same_partition(ref, res.labels)


def test_memmap_input_passes_pixel_size_and_bounded_tiles(tmp_path):
    shape = (700, 500)
    rng = np.random.default_rng(0)
    img = paint_discs(shape, [(rng.uniform(0, 700), rng.uniform(0, 500), rng.uniform(3, 15)) for _ in range(60)])
    src = np.memmap(tmp_path / "mosaic.raw", dtype=np.float32, mode="w+", shape=shape)
    src[:] = img
    src.flush()
    ro = np.memmap(tmp_path / "mosaic.raw", dtype=np.float32, mode="r", shape=shape)
    det = BlobDetector()
    labels = detect_tiled(SEMImage(ro, 0.07, "override"), det, tile_px=192, overlap_px=48)
    assert all(s[0] <= 192 and s[1] <= 192 for s, _ in det.seen)
    assert {px for _, px in det.seen} == {0.07}
    assert_same_partition(untiled(img), labels)
    # A bare array works too; its pixel size is given separately.
    det2 = BlobDetector()
    detect_tiled(ro, det2, tile_px=192, overlap_px=48, pixel_size_um=0.07)
    assert {px for _, px in det2.seen} == {0.07}


def test_classical_detector_tiled_matches_untiled_on_synthetic_field():
    from fracscope import synth
    cfg = synth.load_config(preset="gp", overrides=["electrode.pixel_size_um=0.1", "electrode.field_px=[560,800]"])
    item = synth.make_field(cfg, 0, 0)
    det = ClassicalDetector()
    full = det.detect(item.image)
    # 16 µm overlap > the largest particle (15 µm); tiles hold particles and matrix.
    res = detect_tiled_report(item.image, det, tile_px=400, overlap_px=162)
    assert res.n_tiles >= 4
    m = match_instances(full, res.labels, iou=0.5)
    assert m.f1 >= 0.9, (m.tp, m.fp, m.fn)
    gt = match_instances(item.instances, res.labels, iou=0.5)
    assert gt.f1 >= 0.8, (gt.tp, gt.fp, gt.fn)


def test_tiled_detector_from_config_is_a_detector():
    cfg = {"_target_": "fracscope.detect.tiling.TiledDetector", "detector": {"name": "classical"}}
    det = build_detector({**cfg, "tile_px": 256, "overlap_px": 100})
    assert isinstance(det, TiledDetector) and isinstance(det.detector, ClassicalDetector)
    img = paint_discs((300, 300), [(150, 150, 40)]) * 200 + 20
    labels = det.detect(SEMImage(img.astype(np.uint8), None))
    assert labels.shape == (300, 300) and labels.dtype == np.uint32
    assert labels.max() == 1 and labels[150, 150] == 1


def test_every_detector_says_its_minimum_section_size():
    """The pipeline applies it again to the measured outline, so tiling must pass the inner one on."""
    assert ClassicalDetector().min_diameter_um == 1.5
    assert ClassicalDetector(min_diameter_um=2.0).min_diameter_um == 2.0
    assert build_detector({"name": "tiled", "detector": {"name": "classical", "min_diameter_um": 2.5}}).min_diameter_um == 2.5
    assert build_detector({"name": "learned", "min_diameter_um": 3.0}).min_diameter_um == 3.0
    assert build_detector({"name": "learned", "min_diameter_um": None}).min_diameter_um is None
