"""Tests of fracscope.io: reading SEM files, pixel-size metadata, data bar, prefetch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tifffile
from PIL import Image

from fracscope.io import (
    ReadFailure,
    SEMTags,
    crop_data_bar,
    group_of,
    iter_images,
    list_image_files,
    prefetch,
    read_image_pages,
    read_pixel_size,
    write_sem_tiff,
)
from fracscope.io.read import find_image_files
from fracscope.io.tagged import write_hitachi_txt, write_jeol_txt
from fracscope.types import SEMImage


SAVED_SIZE = (80, 64)  # width, height of _noisy(): the size a microscope's text file states for it


def _noisy(shape=(64, 80), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max
    return (rng.uniform(0.2, 0.8, shape) * hi).astype(dtype)


ALL_TAGS = SEMTags(fei_pixel_size_um=0.05, zeiss_pixel_size=(20.0, "nm"), imagej_pixel_size_um=0.033)


@pytest.mark.parametrize(
    ("tags", "size_um", "source"),
    [
        (SEMTags(fei_pixel_size_um=0.05), 0.05, "fei"),
        (SEMTags(zeiss_pixel_size=(12.5, "nm")), 0.0125, "zeiss"),
        (SEMTags(zeiss_pixel_size=(0.04, "µm")), 0.04, "zeiss"),
        (SEMTags(tescan_pixel_size_um=0.025), 0.025, "tescan"),
        (SEMTags(imagej_pixel_size_um=0.033), 0.033, "imagej"),
        (SEMTags(resolution_pixel_size_um=0.07), 0.07, "tiff_resolution"),
        (SEMTags(), None, "none"),
    ],
)
def test_pixel_size_from_tags(tmp_path, tags, size_um, source):
    path = write_sem_tiff(tmp_path / "a.tif", _noisy(), tags)
    (page,) = read_image_pages(path)
    assert page.pixel_size_source == source
    assert page.pixel_size_um == (None if size_um is None else pytest.approx(size_um))
    assert read_pixel_size(path) == type(read_pixel_size(path))(page.pixel_size_um, source)


def test_pixel_size_precedence(tmp_path):
    path = write_sem_tiff(tmp_path / "all.tif", _noisy(), ALL_TAGS)
    coco = {"all.tif": 0.2}
    assert read_image_pages(path, pixel_size_um=0.01)[0].pixel_size_source == "override"
    assert read_image_pages(path, pixel_size_um=0.01)[0].pixel_size_um == 0.01
    assert read_image_pages(path, coco_pixel_sizes=coco)[0].pixel_size_source == "fei"
    no_fei = write_sem_tiff(tmp_path / "zi.tif", _noisy(), SEMTags(zeiss_pixel_size=(20.0, "nm"), imagej_pixel_size_um=0.033))
    assert read_image_pages(no_fei)[0].pixel_size_source == "zeiss"
    ij = write_sem_tiff(tmp_path / "ij.tif", _noisy(), SEMTags(imagej_pixel_size_um=0.033))
    assert read_image_pages(ij, coco_pixel_sizes={"ij.tif": 0.2})[0].pixel_size_source == "imagej"
    res = write_sem_tiff(tmp_path / "res.tif", _noisy(), SEMTags(resolution_pixel_size_um=0.07))
    assert read_image_pages(res, coco_pixel_sizes={"res.tif": 0.2})[0].pixel_size_source == "tiff_resolution"
    (tmp_path / "sub").mkdir()
    bare = write_sem_tiff(tmp_path / "sub" / "bare.tif", _noisy(), SEMTags())
    page = read_image_pages(bare, coco_pixel_sizes={"sub/bare.tif": 0.2})[0]
    assert (page.pixel_size_um, page.pixel_size_source) == (0.2, "coco")


def test_pixel_size_from_the_microscopes_text_file_beside_the_image(tmp_path):
    hitachi = write_sem_tiff(tmp_path / "h.tif", _noisy(), SEMTags())
    write_hitachi_txt(hitachi, 0.0099, SAVED_SIZE)
    jeol = tmp_path / "j.bmp"  # a JEOL save: BMP with its text file
    Image.fromarray(_noisy()).save(jeol)
    write_jeol_txt(jeol, "1um", 120, SAVED_SIZE)
    for path, size_um, source in ((hitachi, 0.0099, "hitachi"), (jeol, 1 / 120, "jeol")):
        (page,) = read_image_pages(path, coco_pixel_sizes={path.name: 0.2})  # the microscope's file wins over COCO
        assert np.array_equal(page.pixels, _noisy())
        assert (page.pixel_size_um, page.pixel_size_source) == (pytest.approx(size_um), source)
        assert read_pixel_size(path) == type(read_pixel_size(path))(page.pixel_size_um, source)
    nm = tmp_path / "nm.tif"
    write_sem_tiff(nm, _noisy(), SEMTags())
    for marker, bar_px in (("500nm", 50), ("5µm", 500)):
        write_jeol_txt(nm, marker, bar_px, SAVED_SIZE)
        assert read_image_pages(nm)[0].pixel_size_um == pytest.approx(0.01)
    nm.with_suffix(".txt").write_text("[SemImageFile]\r\nPixelSize=0.012 um\r\n")
    assert read_image_pages(nm)[0].pixel_size_um == pytest.approx(0.012)
    # The image's own tags win; a text file that states no pixel size, or a nonsense one, gives none.
    tagged = write_sem_tiff(tmp_path / "t.tif", _noisy(), SEMTags(fei_pixel_size_um=0.05))
    write_hitachi_txt(tagged, 0.0099)
    assert read_image_pages(tagged)[0].pixel_size_source == "fei"
    for name, text in (("n.tif", "Operator notes: 5 kV, BSE\n"), ("z.tif", "[SemImageFile]\nPixelSize=0\n"),
                       ("b.tif", "$$SM_MICRON_BAR 0\n$$SM_MICRON_MARKER 1um\n")):
        write_sem_tiff(tmp_path / name, _noisy(), SEMTags())
        (tmp_path / name).with_suffix(".txt").write_text(text)
        assert read_image_pages(tmp_path / name)[0].pixel_size_source == "none"


def test_a_resized_copy_gets_its_own_pixel_size_from_the_text_file(tmp_path):
    # The text files state the size their pixel size refers to (Hitachi DataSize, JEOL $CM_FULL_SIZE, 1280 x 960
    # here): a copy saved at 80 px wide (1/16, 64 rows: the 960 image rows plus a data bar, scaled) has pixels 16x
    # larger; a crop keeps the stated size.
    resized = write_sem_tiff(tmp_path / "r.tif", _noisy(), SEMTags())
    cropped = tmp_path / "c.png"
    Image.fromarray(_noisy((40, 80))).save(cropped)  # 40 x 80 px cut out of the 1280 x 960 image: not a resize
    for write, stated_um in ((lambda p: write_hitachi_txt(p, 0.01), 0.01), (lambda p: write_jeol_txt(p, "1um", 100), 0.01)):
        write(resized)
        write(cropped)
        (page,) = read_image_pages(resized)
        assert page.pixel_size_um == pytest.approx(16 * stated_um)
        assert read_pixel_size(resized).value_um == pytest.approx(16 * stated_um)
        assert read_image_pages(cropped)[0].pixel_size_um == pytest.approx(stated_um)
        assert read_pixel_size(cropped).value_um == pytest.approx(stated_um)
    # A file that states no size keeps its pixel size whatever the image's.
    resized.with_suffix(".txt").write_text("[SemImageFile]\r\nPixelSize=10\r\n")
    assert read_image_pages(resized)[0].pixel_size_um == pytest.approx(0.01)


def test_an_images_text_file_is_not_a_passed_over_file(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image = write_sem_tiff(folder / "a.tif", _noisy(), SEMTags())
    write_hitachi_txt(image, 0.01)
    (folder / "notes.txt").write_text("not an image's")
    found = find_image_files(folder)
    assert found.files == [image] and found.unsupported == [folder / "notes.txt"]


def test_editor_dpi_is_not_a_pixel_size(tmp_path):
    # 72 dpi (image editors' default) and an ImageJ "unit=inch" file are not calibrations.
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, _noisy(), resolution=(72, 72), resolutionunit="INCH")
    assert read_image_pages(path)[0].pixel_size_source == "none"
    ij = tmp_path / "ij_inch.tif"
    tifffile.imwrite(ij, _noisy(dtype=np.uint16), imagej=True, resolution=(384, 384), metadata={"unit": "inch"})
    assert read_image_pages(ij)[0].pixel_size_um is None


def test_multipage_8_16_bit_and_float(tmp_path):
    pages8 = [_noisy(seed=i) for i in range(3)]
    path = write_sem_tiff(tmp_path / "stack.tif", pages8, SEMTags(fei_pixel_size_um=0.02))
    out = read_image_pages(path)
    assert [p.page for p in out] == [0, 1, 2]
    assert all(p.pixels.dtype == np.uint8 and p.pixel_size_source == "fei" for p in out)
    assert np.array_equal(out[2].pixels, pages8[2])
    assert out[0].source == str(path)
    p16 = _noisy(dtype=np.uint16)
    ij = write_sem_tiff(tmp_path / "ij16.tif", [p16, p16 // 2], SEMTags(imagej_pixel_size_um=0.033))
    out = read_image_pages(ij)
    assert len(out) == 2 and out[1].pixels.dtype == np.uint16
    assert np.array_equal(out[1].pixels, p16 // 2)
    assert out[1].pixel_size_um == pytest.approx(0.033)  # first-page calibration applies
    f = tmp_path / "f.tif"
    tifffile.imwrite(f, np.linspace(0, 1, 64 * 80, dtype=np.float32).reshape(64, 80))
    assert read_image_pages(f)[0].pixels.dtype == np.float32


def test_rgb_tiff_png_jpeg_become_grey(tmp_path):
    grey = _noisy()
    rgb = np.dstack([grey, grey // 2, grey // 4])
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    page = read_image_pages(tmp_path / "rgb.tif")[0]
    expected = np.round(grey * 0.299 + (grey // 2) * 0.587 + (grey // 4) * 0.114)
    assert page.pixels.shape == grey.shape and page.pixels.dtype == np.uint8
    assert np.abs(page.pixels.astype(float) - expected).max() <= 1
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)])).save(tmp_path / "a.png")
    assert np.array_equal(read_image_pages(tmp_path / "a.png")[0].pixels, grey)
    p16 = _noisy(dtype=np.uint16)
    Image.fromarray(p16).save(tmp_path / "b16.png")
    assert np.array_equal(read_image_pages(tmp_path / "b16.png")[0].pixels, p16)
    Image.fromarray(grey).save(tmp_path / "c.jpg", quality=95)
    jpg = read_image_pages(tmp_path / "c.jpg", pixel_size_um=0.1)[0]
    assert jpg.pixels.shape == grey.shape and np.abs(jpg.pixels.astype(int) - grey).mean() < 10
    assert (jpg.pixel_size_um, jpg.pixel_size_source) == (0.1, "override")


def test_bad_files_yield_failures_and_good_ones_come_through(tmp_path):
    write_sem_tiff(tmp_path / "a.tif", _noisy(), SEMTags(fei_pixel_size_um=0.05))
    (tmp_path / "b.tif").write_bytes(b"II*\x00garbage, not a tiff")
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "g2").mkdir()
    Image.fromarray(_noisy()).save(tmp_path / "g2" / "d.png")
    (tmp_path / "notes.txt").write_text("ignored in folders")
    for n_threads in (0, 2):
        out = list(iter_images(tmp_path, n_threads=n_threads))
        assert [type(o).__name__ for o in out] == ["SEMImage", "ReadFailure", "ReadFailure", "SEMImage"]
        assert out[1].source.endswith("b.tif") and out[1].error
        assert out[3].source.endswith("d.png")
    out = list(iter_images([tmp_path / "notes.txt", tmp_path / "missing.tif"]))
    assert all(isinstance(o, ReadFailure) for o in out) and "unsupported" in out[0].error
    assert [f.name for f in list_image_files(str(tmp_path / "**" / "*.png"))] == ["c.png", "d.png"]
    assert group_of(tmp_path / "g2" / "d.png", tmp_path) == "g2"
    assert group_of(tmp_path / "a.tif", tmp_path) == ""


def _with_bar(pixels, rows, rng):
    """Black strip with white 'text' blocks and a scale bar, as SEMs draw it."""
    img = pixels.copy()
    bar = np.zeros((rows, img.shape[1]), img.dtype)
    for x in range(10, img.shape[1] - 40, 37):
        bar[5:14, x : x + int(rng.integers(6, 20))] = 255
    bar[rows - 10 : rows - 6, 20:120] = 255
    img[-rows:] = bar
    return img


def test_data_bar_crop():
    rng = np.random.default_rng(1)
    plain = _noisy((400, 500))
    same, removed = crop_data_bar(plain)
    assert removed == 0 and same.shape == plain.shape
    barred = _with_bar(plain, 40, rng)
    cropped, removed = crop_data_bar(barred)
    assert removed == 40 and np.array_equal(cropped, plain[:-40])
    white = plain.copy()
    white[-30:] = 200  # flat grey bar, black text
    white[-20:-15, 50:90] = 0
    assert crop_data_bar(white)[1] == 30
    assert crop_data_bar(np.full((100, 100), 7, np.uint8))[1] == 0  # flat image: no bar
    assert crop_data_bar(barred, known_rows=40)[1] == 40


def test_a_flat_band_without_ink_is_image_not_a_data_bar():
    # A smooth collector band that heavy JPEG flattened to one value with a few levels of ringing:
    # rows as flat as a bar's, but no text or scale bar, so its rows (and particles' tips) stay.
    rng = np.random.default_rng(2)
    plain = _noisy((400, 500))
    band = plain.copy()
    band[-50:] = 78
    ringing = rng.random((50, 500)) < 0.1
    band[-50:][ringing] = 78 + rng.integers(-3, 4, int(ringing.sum()))
    assert crop_data_bar(band)[1] == 0
    inked = band.copy()
    inked[-30:-20, 40:300:20] = 255  # the same band with white text: a bar
    assert crop_data_bar(inked)[1] == 50
    padded = plain.copy()
    padded[-12:] = 0  # one exact value throughout: padding, cut (nothing in it to lose)
    assert crop_data_bar(padded)[1] == 12


def test_fei_data_bar_height_from_metadata(tmp_path):
    rng = np.random.default_rng(2)
    img = _with_bar(_noisy((300, 320)), 44, rng)
    path = write_sem_tiff(tmp_path / "fei.tif", img, SEMTags(fei_pixel_size_um=0.05, fei_image_height_px=256))
    assert read_image_pages(path, crop_bar=True)[0].pixels.shape == (256, 320)
    assert read_image_pages(path)[0].pixels.shape == (300, 320)


def test_prefetch_keeps_order_bounds_memory_and_reports_failures():
    in_flight = []
    lock = threading.Lock()
    active = 0

    def load(i):
        nonlocal active
        with lock:
            active += 1
            in_flight.append(active)
        time.sleep(0.002 * ((7 * i) % 5))  # finish out of order
        with lock:
            active -= 1
        if i == 5:
            raise OSError("corrupt")
        return i * 10

    out = list(prefetch(range(12), load=load, n_threads=3, depth=4))
    assert [o for o in out if not isinstance(o, ReadFailure)] == [i * 10 for i in range(12) if i != 5]
    assert isinstance(out[5], ReadFailure) and out[5].source == "5" and "corrupt" in out[5].error
    assert max(in_flight) <= 3

    def gen():
        yield from range(3)
        raise ValueError("broken stream")

    out = list(prefetch(gen(), depth=2))
    assert out[:3] == [0, 1, 2] and isinstance(out[3], ReadFailure)
    # An early stop by the consumer must not hang.
    it = prefetch(range(1000), load=lambda i: i, depth=2)
    assert next(it) == 0
    it.close()


def test_prefetch_over_files(tmp_path):
    paths = []
    for i in range(5):
        paths.append(write_sem_tiff(tmp_path / f"{i}.tif", _noisy(seed=i), SEMTags(fei_pixel_size_um=0.01 * (i + 1))))
    out = list(iter_images(paths, n_threads=2))
    assert all(isinstance(o, SEMImage) for o in out)
    assert [round(o.pixel_size_um, 3) for o in out] == [0.01, 0.02, 0.03, 0.04, 0.05]
