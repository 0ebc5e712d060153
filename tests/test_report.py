"""ReportWriter end to end on small hand-built ImageResults, plus the pieces it uses."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from pycocotools import mask as mask_utils

from fracscope.measure import measure_particle
from fracscope.report import ReportWriter, done_images
from fracscope.settings import SettingsError
from fracscope.report.coco import box_rle
from fracscope.report.overlay import CLASS_RGB, PALETTE, render_overlay, write_overlay
from fracscope.report.tables import KEY_COLUMNS, measurement_columns
from fracscope.types import CLASS_NAMES, ImageResult, ParticleCrop, ParticleResult, Phase, SEMImage

from scenes import disc

H, W = 60, 90


def _particle(pid, cls, mask, phases, px, border=False, small=False, low=False) -> ParticleResult:
    rows, cols = np.nonzero(mask)
    bbox = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    probs = [0.1, 0.1, 0.1]
    probs[CLASS_NAMES.index(cls)] = 0.8
    r0, c0, r1, c1 = bbox
    crop = ParticleCrop(
        image=np.pad(mask[r0:r1, c0:c1].astype(np.float32), 4),
        mask=np.pad(mask[r0:r1, c0:c1].astype(np.float32), 4),
        phases=None,
        particle_id=pid,
        scale=1.0,
        bbox=bbox,
    )
    return ParticleResult(
        particle_id=pid,
        class_name=cls,
        probs=tuple(probs),
        low_confidence=low,
        touches_border=border,
        too_small=small,
        bbox=bbox,
        measurements=measure_particle(mask, phases, px),
        crop=crop,
    )


def _image(stem: str, group: str, classes: list[str], px: float | None = 0.05, page: int = 0, border_last=False):
    """An image with one disc particle per class entry; pores in the left half of each disc."""
    inst = np.zeros((H, W), np.uint32)
    phases = np.zeros((H, W), np.uint8)
    parts = []
    for i, cls in enumerate(classes):
        center = (30, 15 + 30 * i) if not (border_last and i == len(classes) - 1) else (5, 15 + 30 * i)
        m = disc((H, W), center, 12)
        inst[m] = i + 1
        phases[m] = Phase.SOLID
        phases[m & (np.arange(W)[None, :] % 5 == 0) & (np.arange(H)[:, None] % 4 == 0)] = Phase.PORE
        if cls != "intact":
            phases[center[0], center[1] - 8 : center[1] + 9] = Phase.CRACK
    for i, cls in enumerate(classes):
        m = inst == i + 1
        border = bool(border_last and i == len(classes) - 1)
        parts.append(_particle(i + 1, cls, m, phases, px, border=border, low=(cls == "mildly_damaged")))
    rng = np.random.default_rng(len(stem))
    pixels = (rng.normal(80, 10, (H, W)) + 100 * (inst > 0)).clip(0, 255).astype(np.uint8)
    img = SEMImage(pixels, px, "synthetic" if px else "none", source=f"/data/{group}/{stem}.tif", page=page)
    return ImageResult(img, stem, group, inst, phases, parts)


@pytest.fixture
def results():
    return [
        _image("a1", "GP", ["intact", "intact", "mildly_damaged"]),
        _image("a2", "GP", ["intact", "broken"], border_last=True),
        _image("b1", "P", ["mildly_damaged", "broken", "broken"], px=None),
    ]


CFG = {"report": {"n_boot": 200, "review_per_class": 4}, "model": {"name": "fake"}}


def _run(out, results, resume=False, failures=()):
    w = ReportWriter(out, CFG, {"model_hash": "abc123"}, resume=resume)
    for r in results:
        if (r.image.source, r.image.page) not in w.done:
            w.add(r)
    for f in failures:
        w.add_failure(*f)
    return w.close()


def test_end_to_end(tmp_path, results):
    summary = _run(tmp_path, results, failures=[("/data/P/bad.tif", 0, "cannot read: truncated")])
    for rel in [
        "particles.csv",
        "particles.parquet",
        "images.csv",
        "errors.csv",
        "summary.json",
        "summary.md",
        "predictions_coco.json",
        "plots/class_fractions.png",
        "plots/porosity_hist.png",
        "plots/radial_profile.png",
        "plots/size_distribution.png",
        "review/low_confidence.csv",
        *(f"review/contact_{c}.png" for c in CLASS_NAMES),
        *(f"overlays/{s}.png" for s in ("a1", "a2", "b1")),
        *(f"instances/{s}.tif" for s in ("a1", "a2", "b1")),
    ]:
        assert (tmp_path / rel).is_file(), rel

    # particles.csv: key columns first, then every measurement column; units by image.
    df = pd.read_csv(tmp_path / "particles.csv")
    assert tuple(df.columns[: len(KEY_COLUMNS)]) == KEY_COLUMNS
    assert set(measurement_columns()) <= set(df.columns)
    assert len(df) == 8
    assert set(df.loc[df.group == "GP", "length_unit"]) == {"um"}
    assert set(df.loc[df.group == "P", "length_unit"]) == {"px"}
    assert df.loc[df.group == "P", "pixel_size_um"].isna().all()
    a1 = df[(df.image == "/data/GP/a1.tif") & (df.particle_id == 1)].iloc[0]
    mask = results[0].instances == 1
    assert a1.area_um2 == pytest.approx(mask.sum() * 0.05**2)
    assert a1.porosity_pct == pytest.approx(measure_particle(mask, results[0].phases, 0.05)["porosity_pct"])
    assert a1["class"] == "intact" and a1.p_intact == pytest.approx(0.8)
    assert (a1.bbox_row0, a1.bbox_row1) == (18, 43)

    # Parquet holds the same table with the same types.
    pq = pd.read_parquet(tmp_path / "particles.parquet")
    pd.testing.assert_frame_equal(pq, df, check_dtype=False)
    assert pq["low_confidence"].dtype == bool and pq["page"].dtype == np.int64

    # Instances round-trip as uint32.
    inst = tifffile.imread(tmp_path / "instances" / "a1.tif")
    assert inst.dtype == np.uint32
    np.testing.assert_array_equal(inst, results[0].instances)

    # Summary counts equal the inputs; the border particle of a2 is not counted.
    js = json.loads((tmp_path / "summary.json").read_text())
    assert js["groups"]["GP"]["counts"] == {"intact": 3, "mildly_damaged": 1, "broken": 0}
    assert js["groups"]["GP"]["n_particles_detected"] == 5
    assert js["groups"]["GP"]["n_touching_border"] == 1
    assert js["groups"]["P"]["counts"] == {"intact": 0, "mildly_damaged": 1, "broken": 2}
    assert js["total"]["counts"] == {"intact": 3, "mildly_damaged": 2, "broken": 2}
    assert js["total"]["n_images"] == 3
    assert js["groups"]["GP"]["pct"]["intact"] == pytest.approx(75.0)
    lo, hi = js["groups"]["GP"]["wilson_pct"]["intact"]
    assert lo < 75.0 < hi
    assert js["test"]["test_name"] == "fisher_exact_mc"  # tiny counts: not chi-square
    # Porosity over complete sections: GP has 4 (a2's border particle excluded).
    assert js["groups"]["GP"]["porosity_pct"]["n"] == 4
    gp = df[(df.group == "GP") & ~df.touches_border]
    assert js["groups"]["GP"]["porosity_pct"]["mean"] == pytest.approx(gp.porosity_pct.mean(), rel=1e-5)
    assert len(js["groups"]["GP"]["radial_profile"]["mean_pct"]) == 6
    # Sizes only from images with a known pixel size: P has none.
    assert js["groups"]["P"]["eq_diameter_um"]["n"] == 0
    assert js["groups"]["GP"]["eq_diameter_um"]["n"] == 4
    assert sum(b["n"] for b in js["groups"]["GP"]["size_bins"]) == 4
    assert js["provenance"]["model_hash"] == "abc123"
    assert js["provenance"]["config"] == CFG
    assert js["failed"] == [{"image": "/data/P/bad.tif", "page": 0, "error": "cannot read: truncated"}]
    assert summary.group("GP").counts["intact"] == 3

    md = (tmp_path / "summary.md").read_text()
    assert "| GP |" in md and "abc123" in md and "bad.tif" in md

    errors = list(csv.DictReader((tmp_path / "errors.csv").open()))
    assert errors == [{"image": "/data/P/bad.tif", "page": "0", "error": "cannot read: truncated"}]

    low = pd.read_csv(tmp_path / "review" / "low_confidence.csv")
    assert sorted(low["class"]) == ["mildly_damaged", "mildly_damaged"]

    coco = json.loads((tmp_path / "predictions_coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 8
    ann = coco["annotations"][0]
    decoded = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), results[0].instances == 1)
    assert ann["score"] == pytest.approx(0.8) and coco["images"][0]["pixel_size_um"] == 0.05
    assert coco["images"][2]["pixel_size_um"] is None


def test_resume_skips_done_and_drops_partial_rows(tmp_path, results):
    _run(tmp_path, results[:2], failures=[("/data/P/b1.tif", 0, "out of memory")])
    assert done_images(tmp_path) == {("/data/GP/a1.tif", 0), ("/data/GP/a2.tif", 0)}
    # A run that died half-way through an image: particle rows without the images.csv row.
    with (tmp_path / "particles.csv").open("a") as f:
        f.write("/data/P/b1.tif,0,1,P,broken,0.1,0.1,0.8,Fal")
    w = ReportWriter(tmp_path, CFG, {}, resume=True)
    assert w.done_images() == done_images(tmp_path)
    for r in results:
        if (r.image.source, r.image.page) not in w.done_images():
            w.add(r)
    summary = w.close()
    assert w.failures == []
    df = pd.read_csv(tmp_path / "particles.csv")
    assert len(df) == 8  # 5 earlier + 3 new, nothing duplicated, the cut row gone
    assert not df.duplicated(["image", "page", "particle_id"]).any()
    assert summary.total.counts == {"intact": 3, "mildly_damaged": 2, "broken": 2}
    assert summary.total.n_images == 3
    # b1 succeeded on resume, so its earlier failure is no longer listed.
    assert summary.failed == []
    assert len(pd.read_csv(tmp_path / "errors.csv")) == 0
    coco = json.loads((tmp_path / "predictions_coco.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 8
    # Adding a done image again is refused, not duplicated.
    w = ReportWriter(tmp_path, CFG, {}, resume=True)
    with pytest.warns(UserWarning):
        assert w.add(results[0]) is False
    w.close()
    assert len(pd.read_csv(tmp_path / "particles.csv")) == 8


def test_empty_run(tmp_path):
    w = ReportWriter(tmp_path, {}, {})
    w.add_failure("x.tif", 0, "unreadable")
    summary = w.close()
    assert summary.total.n_images == 0 and summary.test is None
    assert len(pd.read_parquet(tmp_path / "particles.parquet")) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["failed"][0]["image"] == "x.tif"


def test_box_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for i in range(60):
        labels = np.zeros((17, 23), np.uint8)
        r0, c0 = rng.integers(0, 10, 2)
        labels[r0 : r0 + rng.integers(1, 8), c0 : c0 + rng.integers(1, 14)] = 1
        labels[rng.random(labels.shape) < 0.05 * (i % 4)] = 1
        if i % 5 == 0:  # runs across columns: a column ending and the next starting in ones
            labels[-3:, 4] = labels[:2, 5] = 1
        if i % 7 == 0:  # the mask's first and last pixels
            labels[0, 0] = labels[-1, -1] = 1
        rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
        box = labels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] == 1
        rle = box_rle(box, rows[0], cols[0], *labels.shape)
        ref = mask_utils.encode(np.asfortranarray(labels))
        assert rle["counts"] == ref["counts"].decode() and rle["size"] == list(labels.shape)


def test_overlay_colours_and_size():
    res = _image("ov", "GP", ["intact", "mildly_damaged", "broken"])
    rgb = render_overlay(res, show_ids=False)
    assert rgb.shape[0] > H and rgb.shape[1] >= W and rgb.dtype == np.uint8
    # Outline of particle 3 (broken) is red: its left-most mask pixel.
    r, c = np.argwhere(res.instances == 3)[np.argmin(np.argwhere(res.instances == 3)[:, 1])]
    assert tuple(rgb[r, c]) == CLASS_RGB["broken"]

    # A 2048 × 1536 image with ~100 particles renders in well under 0.5 s.
    big_h, big_w = 1536, 2048
    inst = np.zeros((big_h, big_w), np.uint32)
    phases = np.zeros((big_h, big_w), np.uint8)
    parts = []
    rr, cc = np.ogrid[:big_h, :big_w]
    pid = 0
    for r0 in range(80, big_h - 80, 160):
        for c0 in range(80, big_w - 80, 180):
            pid += 1
            m = (rr - r0) ** 2 + (cc - c0) ** 2 <= 70**2
            inst[m] = pid
            phases[m] = 1 + ((rr + cc) % 7 == 0)[m]
            bbox = (r0 - 70, c0 - 70, r0 + 71, c0 + 71)
            parts.append(ParticleResult(pid, CLASS_NAMES[pid % 3], (0.3, 0.3, 0.4), False, False, False, bbox))
    img = SEMImage(np.random.default_rng(0).integers(0, 65535, (big_h, big_w), dtype=np.uint16), 0.05)
    big = ImageResult(img, "big", "g", inst, phases, parts)
    # Speed is measured in bench/throughput.py (the write stage), not asserted here.
    out = render_overlay(big)
    assert out.shape[1:] == (big_w, 3) and big_h < out.shape[0] < big_h + 100
    small = render_overlay(big, max_px=1000)
    assert small.shape[1] <= 1024


def test_overlay_png_is_the_rendered_overlay(tmp_path):
    from PIL import Image

    res = _image("png", "GP", ["intact", "mildly_damaged", "broken"])
    res.phases[res.instances == 2] = Phase.PORE  # tinted pixels too
    path = write_overlay(res, tmp_path)
    with Image.open(path) as png:
        assert png.mode == "P"  # one byte per pixel: a third of the RGB file's work
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), render_overlay(res))
    # The palette's greys span black to white; the tints and drawn colours are distinct from them.
    assert tuple(PALETTE[0]) == (0, 0, 0) and tuple(PALETTE[127]) == (255, 255, 255)
    assert len({tuple(c) for c in PALETTE[:197]}) == 197  # 128 greys, 64 tints, crack, pore, 3 classes


def test_inner_edges_equals_find_boundaries():
    from skimage.segmentation import find_boundaries

    from fracscope.report.overlay import inner_edges

    rng = np.random.default_rng(1)
    labels = np.zeros((40, 50), np.uint32)
    for pid in range(1, 8):
        r, c = rng.integers(5, 35), rng.integers(5, 45)
        labels[disc(labels.shape, (r, c), rng.integers(3, 9))] = pid
    np.testing.assert_array_equal(inner_edges(labels), find_boundaries(labels, connectivity=1, mode="inner"))


def test_options_change_what_counts(tmp_path, results):
    cfg = {"report": {"count_border_particles": True, "n_boot": 50, "write_overlays": False, "write_review": False}}
    w = ReportWriter(tmp_path, cfg, {})
    for r in results:
        w.add(r)
    w.add_failure("/data/x.tif", 2, "boom")
    assert w.failures == [("/data/x.tif", 2, "boom")]
    summary = w.close()
    # a2's border particle (broken) now counts.
    assert summary.group("GP").counts == {"intact": 3, "mildly_damaged": 1, "broken": 1}
    # Porosity still uses complete sections only.
    assert summary.group("GP").porosity_pct["n"] == 4
    assert not (tmp_path / "overlays").exists() and not (tmp_path / "review").exists()
    assert w.failures == [("/data/x.tif", 2, "boom")]
    with pytest.raises(SettingsError, match="unknown key 'n_bootstrap' in the report config; valid keys: .*n_boot"):
        ReportWriter(tmp_path / "other", {"report": {"n_bootstrap": 5}}, {})


def test_review_captions_keep_group_and_file():
    from fracscope.report.review import short_stem

    a, b = short_stem("GP-NCM_100cyc__field_00"), short_stem("P-NCM_100cyc__field_00")
    assert a != b and len(a) == len(b) == 16
    assert a.startswith("GP-NCM") and a.endswith("field_00")
    assert short_stem("f0") == "f0"


def test_review_sheets_sample_only_counted_particles(results):
    from dataclasses import replace

    from fracscope.report.review import ReviewSampler

    small = replace(results[0], particles=[replace(p, too_small=True) for p in results[0].particles])
    default = ReviewSampler(per_class=10)
    for r in (small, *results[1:]):
        default.add(r)
    # a1 is all too small; a2's broken particle touches the border: neither is offered.
    assert default.seen == {"intact": 1, "mildly_damaged": 1, "broken": 2}
    everything = ReviewSampler(per_class=10, include_border=True, include_too_small=True)
    for r in (small, *results[1:]):
        everything.add(r)
    assert everything.seen == {"intact": 3, "mildly_damaged": 2, "broken": 3}
