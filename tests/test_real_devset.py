"""The real development set (data/real/) loads as documented, and the shipped pipeline still finds its particles."""

from __future__ import annotations

import csv
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "real"
sys.path.insert(0, str(REPO / "bench"))

from real_images import Annotation, implied_pixel_size_um, load_annotation, run_pipeline, score  # noqa: E402

# Counts per class as data/real/README.md states them: (intact, mildly_damaged, broken, unsure).
DOCUMENTED = {
    "pt_bse": (24, 6, 1, 3),
    "samba_3phase": (17, 2, 0, 0),
    "qbi_xct": (95, 16, 0, 2),
}
CLASSES = ("intact", "mildly_damaged", "broken", "unsure")


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_annotation_files_agree_with_each_other_and_the_readme(name):
    labels = tifffile.imread(DATA / name / "labels.tif")
    assert labels.dtype == np.uint16
    with open(DATA / name / "particles.csv") as f:
        rows = list(csv.DictReader(f))
    ids = sorted(int(r["id"]) for r in rows)
    present = np.unique(labels)
    assert ids == list(range(1, len(rows) + 1))
    assert present.tolist() == [0, *ids]
    counts = tuple(sum(r["class"] == c for r in rows) for c in CLASSES)
    assert counts == DOCUMENTED[name]
    h, w = labels.shape
    area = np.bincount(labels.ravel())
    for r in rows:
        k = int(r["id"])
        assert int(r["area_px"]) == area[k]
        rr, cc = np.nonzero(labels == k)
        cut = rr.min() == 0 or cc.min() == 0 or rr.max() == h - 1 or cc.max() == w - 1
        assert int(r["border_cut"]) == int(cut)


def test_region_of_image_c_holds_every_annotated_centroid_and_at_least_100_sections():
    ann = load_annotation("qbi_xct")
    x0, y0, x1, y1 = ann.region
    assert len(ann.classes) >= 100
    for k in ann.classes:
        rr, cc = np.nonzero(ann.labels == k)
        assert x0 <= cc.mean() < x1 and y0 <= rr.mean() < y1


def test_score_finds_small_matched_sections_and_ignores_small_unmatched_detections():
    labels = np.zeros((60, 60), np.uint16)
    labels[5:13, 5:13] = 1  # 8 px across: under the 10 px minimum, but annotated
    labels[30:50, 30:50] = 2
    pred = np.zeros_like(labels, np.uint32)
    pred[5:12, 5:13] = 7  # a small detection of section 1 (IoU 0.875)
    pred[30:50, 30:50] = 8
    pred[52:56, 2:6] = 9  # small, unmatched: not counted false
    pred[20:28, 40:58] = 10  # large, unmatched: false
    ann = Annotation("constructed", np.zeros(labels.shape, np.uint8), labels, {1: "intact", 2: "broken"}, 10.0, None)
    table = pd.DataFrame({"particle_id": [7, 8], "class": ["intact", "mildly_damaged"]})
    tp, n_true, n_det, fp, n_small, confusion = score(ann, pred, table)
    assert (tp, n_true, n_det, fp, n_small) == (2, 2, 3, 1, 1)
    assert confusion[0, 0] == 1 and confusion[2, 1] == 1


@pytest.mark.parametrize(
    ("name", "min_recall", "max_false", "polarity"),
    [
        # Measured 2026-12-07 with the shipped models (a small detection that matches an annotated section
        # counts as found): B recall 1.000 (19/19), false share 0.095 (2/21); C recall 0.885 (100/113),
        # false share 0.038 (4/104); A (Pt-infiltrated, detected in dark-pore contrast) recall 0.941 (32/34),
        # false share 0.086 (3/35). The floors allow about three more misses on each; a detector or pipeline
        # change that loses more real particles fails here.
        ("pt_bse", 0.85, 0.20, "bright"),
        ("samba_3phase", 0.89, 0.20, "dark"),
        ("qbi_xct", 0.85, 0.10, "dark"),
    ],
)
def test_shipped_pipeline_finds_the_annotated_particles_at_the_implied_pixel_size(tmp_path, name, min_recall, max_false,
                                                                                  polarity):
    ann = load_annotation(name)
    px = implied_pixel_size_um(ann.labels)
    args = Namespace(detector=None, phase_model=None, model=None)
    pred, table, _, found_polarity = run_pipeline(ann, tmp_path, px, args)
    assert found_polarity == f"auto: {polarity}"
    tp, n_true, n_det, fp, _, _ = score(ann, pred, table)
    assert tp / n_true >= min_recall
    assert fp / n_det <= max_false


def test_the_bench_degrades_an_image_as_documented():
    from real_images import degraded

    image = np.full((4, 5), 100, np.uint8)
    assert degraded(image, None) is image
    gain = degraded(image, "gain:0.2")
    np.testing.assert_array_equal(gain[0], [80, 90, 100, 110, 120])  # 1 - 0.2 ... 1 + 0.2, left to right
    vignette = degraded(image, "vignette:0.4")
    assert vignette[0, 0] == 60 and vignette.max() < 100  # 1 - 0.4 r^2 / 2 with r^2 = 2 at the corners
    ramp = degraded(np.arange(200, dtype=np.uint16).reshape(10, 20), "ramp:0.1")
    assert ramp.dtype == np.uint16 and ramp[0, 0] == 0 and ramp[9, 19] == 199 + 20  # +-0.1 of the 0.5-99.5 % range
    with pytest.raises(ValueError, match="KIND:S"):
        degraded(image, "tilt:0.2")
    two_levels = np.repeat(np.array([[50, 150]], np.uint8), 60, axis=1).repeat(50, axis=0)  # grey range 100
    noisy = degraded(two_levels, "noise:0.05")
    assert noisy.dtype == np.uint8 and 4.5 < (noisy.astype(float) - two_levels).std() < 5.5  # SD 0.05 of 100
    step = np.zeros((20, 40), np.uint16)
    step[:, 20:] = 1000
    blurred = degraded(step, "blur:2")
    assert abs(int(blurred[0, 19]) + int(blurred[0, 20]) - 1000) <= 1 and 0 < blurred[0, 17] < blurred[0, 19] < 500
    jpeg = degraded(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)), "jpeg:20")
    assert jpeg.shape == (64, 64) and jpeg.dtype == np.uint8 and 0 < np.abs(jpeg.astype(int) - np.arange(64) * 4).mean() < 10
    wide = degraded(step, "jpeg:95")  # 16 bits: saved as 8 bits over its range
    assert wide.dtype == np.uint8 and wide[0, 0] < 10 and wide[0, -1] > 245
