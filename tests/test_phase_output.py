"""Issue 18, native-resolution phases as outputs: phases/<stem>.tif beside instances/, thin cracks
visible on downscaled overlays and on the review cells (cut from the source image)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import fracscope.report.record as writer_module
from fracscope.report import ReportWriter
from fracscope.report.overlay import CLASS_RGB, CRACK_RGB, PORE_RGB, any_pool, render_overlay
from fracscope.report.review import ReviewSampler, make_thumbnail
from fracscope.types import CLASS_NAMES, ImageResult, ParticleResult, Phase, SEMImage

from scenes import disc

CFG = {"report": {"n_boot": 20, "review_per_class": 4}}


def _particle(pid: int, cls: str, mask: np.ndarray, border: bool = False) -> ParticleResult:
    rows, cols = np.nonzero(mask)
    bbox = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    probs = [0.1, 0.1, 0.1]
    probs[CLASS_NAMES.index(cls)] = 0.8
    return ParticleResult(pid, cls, tuple(probs), False, border, False, bbox)  # no crop kept


def _cracked(stem: str, shape=(600, 640), crack_row: int = 301, px: float | None = 0.05) -> ImageResult:
    """Particle 1 (broken, counted): a big disc with a 1-px horizontal crack at `crack_row` and a
    1-px diagonal crack; particle 2 (cut by the border, not counted): a disc with a 1-px crack."""
    h, w = shape
    inst = np.zeros(shape, np.uint32)
    big = disc(shape, (300, 300), 250)
    inst[big] = 1
    edge = disc(shape, (60, w - 20), 50)
    inst[edge] = 2
    phases = np.where(inst > 0, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    phases[crack_row, 150:451] = Phase.CRACK
    d = np.arange(200)
    phases[180 + d, 200 + d] = Phase.CRACK
    phases[60, w - 60 : w] = Phase.CRACK
    phases[big & (np.arange(w)[None, :] % 9 == 0) & (np.arange(h)[:, None] % 9 == 0)] = Phase.PORE
    pixels = (np.random.default_rng(0).normal(70, 8, shape) + 120 * (inst > 0) - 90 * (phases == Phase.CRACK))
    img = SEMImage(pixels.clip(0, 255).astype(np.uint8), px, "synthetic" if px else "none", source=f"/d/{stem}.tif")
    parts = [_particle(1, "broken", inst == 1), _particle(2, "mildly_damaged", inst == 2, border=True)]
    return ImageResult(img, stem, "g", inst, phases, parts)


def _is(rgb: np.ndarray, colour) -> np.ndarray:
    return (rgb[..., :3] == np.asarray(colour, np.uint8)).all(axis=-1)


def test_any_pool_is_block_any_downscaled_and_nearest_upscaled():
    rng = np.random.default_rng(3)
    mask = rng.random((30, 42)) < 0.02
    np.testing.assert_array_equal(any_pool(mask, (10, 14), 1, 3), mask.reshape(10, 3, 14, 3).any(axis=(1, 3)))
    np.testing.assert_array_equal(any_pool(mask, (60, 84), 2, 1), np.kron(mask, np.ones((2, 2), bool)))
    assert any_pool(mask, (30, 42), 1, 1).sum() == mask.sum()


def test_phase_map_is_written_beside_instances_with_its_pixel_size(tmp_path):
    res = _cracked("A__f0")
    nopx = _cracked("A__f1", px=None)
    nopx.image.source = "/d/A__f1.tif"
    w = ReportWriter(tmp_path, CFG, {})
    w.add(res)
    w.add(nopx)
    w.close()
    phases = tifffile.imread(tmp_path / "phases" / "A__f0.tif")
    assert phases.dtype == np.uint8
    np.testing.assert_array_equal(phases, res.phases)
    with tifffile.TiffFile(tmp_path / "phases" / "A__f0.tif") as ph, \
            tifffile.TiffFile(tmp_path / "instances" / "A__f0.tif") as inst:
        for tag in ("XResolution", "YResolution", "ResolutionUnit"):
            assert ph.pages[0].tags[tag].value == inst.pages[0].tags[tag].value
        assert ph.pages[0].tags["XResolution"].value == (200_000, 1)  # pixels per cm at 0.05 µm/px
    with tifffile.TiffFile(tmp_path / "phases" / "A__f1.tif") as ph:
        assert "XResolution" not in ph.pages[0].tags or ph.pages[0].tags["XResolution"].value == (1, 1)
    assert sorted(p.name for p in (tmp_path / "phases").iterdir()) == ["A__f0.tif", "A__f1.tif"]
    assert not list(tmp_path.rglob("*.tmp"))

    off = tmp_path / "off"
    w = ReportWriter(off, {"report": {**CFG["report"], "write_phases": False}}, {})
    w.add(res)
    w.close()
    assert not (off / "phases").exists() and (off / "instances" / "A__f0.tif").is_file()


def test_a_run_killed_while_writing_leaves_no_cut_file_and_the_resume_writes_it(tmp_path, monkeypatch):
    first, second = _cracked("a"), _cracked("b")
    w = ReportWriter(tmp_path, CFG, {})
    w.add(first)
    w.close()
    real = writer_module.write_label_tiff

    def killed(path, labels, *args, **kwargs):
        if "phases" in str(path):
            path.write_bytes(b"II*\x00 cut short")
            raise KeyboardInterrupt
        return real(path, labels, *args, **kwargs)

    monkeypatch.setattr(writer_module, "write_label_tiff", killed)
    w = ReportWriter(tmp_path, CFG, {}, resume=True)
    with pytest.raises(KeyboardInterrupt):
        w.add(second)
    assert not (tmp_path / "phases" / "b.tif").exists()  # only b.tif.tmp, never a cut b.tif
    monkeypatch.setattr(writer_module, "write_label_tiff", real)

    w = ReportWriter(tmp_path, CFG, {}, resume=True)
    for r in (first, second):
        if (r.image.source, r.image.page) not in w.done:
            w.add(r)
    w.close()
    assert sorted(p.name for p in (tmp_path / "phases").iterdir()) == ["a.tif", "b.tif"]
    for r in (first, second):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "phases" / f"{r.stem}.tif"), r.phases)


@pytest.mark.parametrize("max_px", [160, 213])  # factors 4 and 3: row 301 is not a sampled row
def test_a_one_pixel_crack_stays_visible_on_a_downscaled_overlay(max_px):
    res = _cracked("f")
    f = int(np.ceil(640 / max_px))
    assert 301 % f != 0
    rgb = render_overlay(res, max_px=max_px, show_ids=False)
    crack = _is(rgb, CRACK_RGB)
    # The horizontal crack, 301 source px long: its output row carries it nearly end to end.
    along = crack[301 // f, 150 // f : 451 // f]
    assert along.sum() >= 0.9 * along.size
    # The diagonal crack, 200 source px: at least one crack pixel per output row it crosses.
    rows = crack[180 // f : 380 // f]
    assert rows.any(axis=1).mean() >= 0.9
    # Not in the uncounted section (cut by the border), and distinct from the other colours.
    assert not crack[: 120 // f, (640 - 80) // f :].any()
    assert CRACK_RGB not in (PORE_RGB, *CLASS_RGB.values())


def test_review_cell_is_cut_from_the_source_image_with_its_cracks():
    res = _cracked("f")
    size = 100  # the particle's 501-px box is downscaled about 5.5 times
    thumb = make_thumbnail(res, res.particles[0], size)
    assert thumb.shape == (size, size, 3) and thumb.dtype == np.uint8
    crack = _is(thumb, CRACK_RGB)
    # The window is the box plus 10 % of its side on every edge: source px r lands at (r - row0) * size / side.
    r0, c0, r1, c1 = res.particles[0].bbox
    side = (r1 - r0) + 2 * int(np.ceil(0.1 * (r1 - r0)))
    row0, col0 = (r0 + r1 - side) // 2, (c0 + c1 - side) // 2
    row = (301 - row0) * size // side
    along = crack[row, (150 - col0) * size // side : (451 - col0) * size // side]
    assert along.sum() >= 0.9 * along.size
    assert _is(thumb, CLASS_RGB["broken"]).sum() > 100  # the outline
    # Particles without a kept crop are offered to the sheets (the cells need only the image).
    sampler = ReviewSampler(per_class=4, include_border=True)
    sampler.add(res)
    assert sampler.seen["broken"] == 1 and sampler.seen["mildly_damaged"] == 1
    # A box at the image's edge: the window leaves the image and is black there.
    edge = make_thumbnail(res, res.particles[1], 64)
    assert edge.shape == (64, 64, 3) and (edge[:, -3:] == 0).all()
