"""Tests of fracscope.io.scalebar: scale bars in rendered SEM data bars, their labels, and reading them.

Data bars are drawn by the generator's own `fracscope.synth.databar.render_data_bar` (vendor-like
layouts) below a noisy image, with a known bar length in px and label, so the truth is exact: pixel size = label / bar length.
Bar finding and label parsing never skip; OCR tests skip without pytesseract or tesseract.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fracscope.io import iter_images, read_image_pages
from fracscope.io import scalebar
from fracscope.io.databar import find_data_bar
from fracscope.io.scalebar import (
    find_scale_bar,
    parse_scale_label,
    read_scale_label,
    scale_bar_pixel_size_um,
)
from fracscope.synth.databar import LAYOUTS, font, render_data_bar

LABELS_UM: dict[str, float] = {
    "100 nm": 0.1,
    "500 nm": 0.5,
    "1 µm": 1.0,
    "2 µm": 2.0,
    "5 µm": 5.0,
    "10 µm": 10.0,
    "20 µm": 20.0,
    "50 µm": 50.0,
}
BAR_LENGTHS_PX = (83, 120, 177, 240, 311)


@dataclass(frozen=True)
class Rendered:
    pixels: np.ndarray  # uint8, image + data bar
    bar_rows: int
    bar_length_px: int
    label_um: float
    bar_col0: int

    @property
    def pixel_size_um(self) -> float:
        return self.label_um / self.bar_length_px


def noisy_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Grains and shot noise, nothing flat (so the data bar below it is found)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(110, 25, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(12):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(20, 80)
        base[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 60
    return np.clip(base, 0, 255).astype(np.uint8)


def render(
    layout: str,
    label: str,
    bar_length_px: int,
    seed: int = 0,
    dejavu: bool = True,
    width: int = 1024,
    font_px: int = 18,
    label_um: float | None = None,
) -> Rendered:
    """A noisy image with a vendor-like data bar holding a scale bar of `bar_length_px` labelled `label`.

    layout: one of `fracscope.synth.databar.LAYOUTS` (described there). `label_um` is
    the label's value when it is not a key of LABELS_UM.
    """
    strip = render_data_bar(layout, width, label, bar_length_px, font_px, dejavu)
    bar = strip.pixels
    image = noisy_image((600, width), seed)
    value_um = LABELS_UM[label] if label_um is None else label_um
    return Rendered(np.vstack([image, bar]), bar.shape[0], bar_length_px, value_um, strip.bar_col0)


CASES = [
    (layout, label, BAR_LENGTHS_PX[(i + j) % len(BAR_LENGTHS_PX)])
    for i, layout in enumerate(LAYOUTS)
    for j, label in enumerate(LABELS_UM)
]


def _ocr_available() -> None:
    pytest.importorskip("pytesseract")
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract binary not installed (apt-get install tesseract-ocr)")


# --- label parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "um"),
    [
        ("10 µm", 10.0),  # micro sign U+00B5
        ("10 μm", 10.0),  # Greek mu U+03BC
        ("10µm", 10.0),
        ("10 um", 10.0),
        ("1 μm", 1.0),
        ("1.5 µm", 1.5),
        ("500 nm", 0.5),
        ("100nm", 0.1),
        ("0.5 mm", 500.0),
        ("0,5 µm", 0.5),
        ("  2 um \n", 2.0),
        ("2 microns", 2.0),
        ("10 µm.", 10.0),
        ("1000 nm", 1.0),
    ],
)
def test_parse_scale_label(text, um):
    assert parse_scale_label(text) == pytest.approx(um)


@pytest.mark.parametrize(
    "text",
    [None, "", "10", "µm", "5.00 kV", "10 000 x", "HV 5.00 kV 10 µm", "10 µm 20 µm", "10 pm", "-5 µm", "0 nm", "10 m"]
    + ["5900 nm", "2500 um"],  # over 1000: a misread, a scale bar would use the next unit
)
def test_parse_scale_label_refuses_what_is_not_one_length(text):
    assert parse_scale_label(text) is None


# --- bar finding (no OCR) -------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "label", "length_px"), CASES)
def test_find_scale_bar_exact_length(layout, label, length_px):
    r = render(layout, label, length_px)
    assert find_data_bar(r.pixels) == r.bar_rows
    line = find_scale_bar(r.pixels[-r.bar_rows :])
    assert line is not None
    assert abs(line.length_px - length_px) <= 1
    assert abs(line.col0 - r.bar_col0) <= 1
    assert line.bright == (layout in ("fei", "jeol"))


def test_find_scale_bar_passes_over_borders_and_boxes():
    strip = np.zeros((60, 800), np.uint8)
    strip[0, :] = 255  # border line over the full width
    strip[5:55, 20:400] = 0
    strip[5, 20:400] = strip[54, 20:400] = 255  # box outline: two separate long edges
    strip[5:55, 20] = strip[5:55, 399] = 255
    assert find_scale_bar(strip) is None
    strip[30:34, 500:650] = 255  # the bar: shorter than the box, but a bar
    line = find_scale_bar(strip)
    assert line is not None and (line.col0, line.col1, line.thickness_px) == (500, 650, 4)


def test_find_scale_bar_none_in_flat_or_text_only_strip():
    assert find_scale_bar(np.full((40, 500), 7, np.uint8)) is None
    strip = Image.new("L", (500, 40), 0)
    ImageDraw.Draw(strip).text((10, 10), "HV 5.00 kV  mag 10 000 x", font=font(18), fill=255)
    assert find_scale_bar(np.asarray(strip)) is None


def test_no_data_bar_gives_none_and_keeps_pixels():
    pixels = noisy_image((300, 400), seed=3)
    before = pixels.copy()
    assert scale_bar_pixel_size_um(pixels) is None
    np.testing.assert_array_equal(pixels, before)


# --- OCR ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "label", "length_px"), CASES)
def test_scale_bar_pixel_size(layout, label, length_px):
    _ocr_available()
    r = render(layout, label, length_px, seed=1)
    reading = scale_bar_pixel_size_um(r.pixels)
    assert reading is not None
    assert abs(reading.length_px - length_px) <= 1
    assert reading.label_um == pytest.approx(r.label_um)
    assert reading.pixel_size_um == pytest.approx(r.pixel_size_um, rel=0.02)


def test_bar_without_label_is_not_read_from_nearby_fields():
    # A labelled bar's neighbours "WD = 5.1 mm", "EHT = 5.00 kV" must not be taken for its label.
    _ocr_available()
    strip = Image.new("L", (1024, 80), 255)
    d = ImageDraw.Draw(strip)
    d.rectangle((40, 32, 439, 36), fill=0)
    d.text((455, 25), "WD = 5.1 mm", font=font(18), fill=0)
    d.text((200, 45), "EHT = 5.00 kV", font=font(18), fill=0)
    pixels = np.vstack([noisy_image((600, 1024), seed=5), np.asarray(strip)])
    assert find_scale_bar(pixels[-80:]) is not None
    assert scale_bar_pixel_size_um(pixels) is None


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("label", "um"), [("500 nm", 0.5), ("2 um", 2.0)])
def test_read_scale_label_with_default_font(layout, label, um):
    # Pillow's built-in font has no µ glyph: labels in nm and "um".
    _ocr_available()
    r = render(layout, label, 177, dejavu=False, label_um=um)
    strip = r.pixels[-r.bar_rows :]
    assert parse_scale_label(read_scale_label(strip, find_scale_bar(strip))) == pytest.approx(um)


def test_file_without_tags_gets_pixel_size_from_scale_bar(tmp_path):
    _ocr_available()
    r = render("zeiss", "10 µm", 240, seed=2)
    Image.fromarray(r.pixels).save(tmp_path / "untagged.png")
    (image,) = read_image_pages(tmp_path / "untagged.png")
    assert image.pixel_size_source == "scale_bar"
    assert image.pixel_size_um == pytest.approx(10.0 / 240, rel=0.02)
    np.testing.assert_array_equal(image.pixels, r.pixels)  # nothing cropped unless asked
    (cropped,) = iter_images(tmp_path / "untagged.png", crop_bar=True)
    assert cropped.pixel_size_source == "scale_bar"
    assert cropped.pixels.shape == (600, 1024)
    (override,) = read_image_pages(tmp_path / "untagged.png", pixel_size_um=0.07)
    assert (override.pixel_size_um, override.pixel_size_source) == (0.07, "override")


def test_file_without_data_bar_keeps_no_pixel_size(tmp_path):
    Image.fromarray(noisy_image((300, 400), seed=4)).save(tmp_path / "plain.png")
    (image,) = read_image_pages(tmp_path / "plain.png")
    assert (image.pixel_size_um, image.pixel_size_source) == (None, "none")


@pytest.mark.parametrize("missing", ["pytesseract", "tesseract binary"])
def test_missing_ocr_warns_once_and_gives_none(monkeypatch, caplog, missing):
    if missing == "pytesseract":
        import builtins

        real_import = builtins.__import__

        def no_pytesseract(name, *args, **kwargs):
            if name == "pytesseract":
                raise ImportError("No module named 'pytesseract'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_pytesseract)
    else:
        pytesseract = pytest.importorskip("pytesseract")
        monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    scalebar._load_tesseract.cache_clear()
    try:
        r = render("fei", "10 µm", 240)
        with caplog.at_level(logging.WARNING, logger="fracscope.io.scalebar"):
            assert scale_bar_pixel_size_um(r.pixels) is None
            assert scale_bar_pixel_size_um(r.pixels) is None
        warnings = [rec for rec in caplog.records if "OCR unavailable" in rec.getMessage()]
        assert len(warnings) == 1
        assert "pip install 'fracscope[ocr]'" in warnings[0].getMessage()
        assert "apt-get install tesseract-ocr" in warnings[0].getMessage()
    finally:
        monkeypatch.undo()
        scalebar._load_tesseract.cache_clear()


def test_tags_win_over_the_scale_bar(tmp_path):
    from fracscope.io import SEMTags, write_sem_tiff

    r = render("fei", "10 µm", 240)
    path = write_sem_tiff(tmp_path / "tagged.tif", r.pixels, SEMTags(fei_pixel_size_um=0.05))
    (image,) = read_image_pages(path)
    assert (image.pixel_size_um, image.pixel_size_source) == (pytest.approx(0.05), "fei")


def test_jpeg_file_gets_pixel_size_from_scale_bar(tmp_path):
    # JPEG blurs the bar's ends and speckles the flat strip; bar and label still read.
    _ocr_available()
    r = render("fei", "5 µm", 177, seed=6)
    Image.fromarray(r.pixels).save(tmp_path / "untagged.jpg", quality=80)
    (image,) = read_image_pages(tmp_path / "untagged.jpg")
    assert image.pixel_size_source == "scale_bar"
    assert image.pixel_size_um == pytest.approx(5.0 / 177, rel=0.02)
