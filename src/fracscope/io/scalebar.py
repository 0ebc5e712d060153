"""Pixel size read from the scale bar in an SEM data bar ("10 µm" over a bar of N pixels).

Used only when a file's tags give no pixel size. The search stays inside the data bar
strip at the bottom (`fracscope.io.databar.find_data_bar`), so an image without one costs
one flat-row scan.

1. `find_scale_bar`: the longest horizontal bar in the strip: a connected component of
   pixels far from the strip's background value (brighter or darker) whose full-width
   rows form one block (a filled bar, or a line with end ticks; a box outline has two
   separate full-width rows and is passed over), not spanning the whole strip (a border).
2. `read_scale_label`: OCR (optional ``pytesseract`` + the ``tesseract`` binary) of the
   text lines nearest the bar, above, below, left or right of it (vendor layouts differ).
3. `parse_scale_label`: "10 µm", "500 nm", "0.5 mm" -> µm.

pixel_size_um = label_um / bar length in px; values outside
`fracscope.io.pixel_size.PLAUSIBLE_UM` are rejected.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from PIL import Image
from scipy import ndimage

from fracscope.io.databar import find_data_bar
from fracscope.io.pixel_size import PLAUSIBLE_UM, unit_to_um

log = logging.getLogger(__name__)

# Characters a scale label is made of; restricting tesseract to them stops "µm" being
# read as "pm" or "jim". Both micro sign (U+00B5) and Greek mu (U+03BC) occur.
OCR_WHITELIST = "0123456789.nmuµμ"
# Ways of preparing the label for tesseract, tried in turn: (text height in px after
# upscaling, binarise after smoothing (else grey for tesseract's own threshold),
# resampling). A label is accepted once two of them read the same value. Chosen on 120
# rendered labels (DejaVu 13-24 px, Pillow's font): each alone misses 6-11 and the
# others misread up to 6 as another valid label ("500 nm" as "200 nm"); voting over
# these four read 119 and misread none.
OCR_VARIANTS: tuple[tuple[int, bool, Image.Resampling], ...] = (
    (40, False, Image.Resampling.BICUBIC),
    (35, False, Image.Resampling.BICUBIC),
    (45, True, Image.Resampling.BICUBIC),
    (60, True, Image.Resampling.BILINEAR),
)
OCR_INSTALL_HINT = "pip install 'fracscope[ocr]' and apt-get install tesseract-ocr"

# "10 µm", "10µm", "0.5 mm", "500 nm", "2 microns"; comma as decimal mark (European software).
_LABEL = re.compile(r"(\d+(?:[.,]\d+)?)\s*(nm|um|mm|microns?)\.?")
# Scale bars switch to the next unit at 1000: "5900 nm" is a misread "500 nm", not a label.
_MAX_LABEL_VALUE = 1000.0


@dataclass(frozen=True)
class ScaleBarLine:
    """A scale bar in a data-bar strip, in strip coordinates (end-exclusive).

    row0, row1: rows of the whole drawn shape (bar, or line and its end ticks).
    col0, col1: its measured ends; ``length_px = col1 - col0``.
    thickness_px: rows of the full-length part (the filled bar or the line).
    bright: drawn brighter than the strip background (white on black).
    """

    row0: int
    row1: int
    col0: int
    col1: int
    thickness_px: int
    bright: bool

    @property
    def length_px(self) -> int:
        return self.col1 - self.col0


@dataclass(frozen=True)
class ScaleBarReading:
    """A pixel size read from a scale bar: `label_um` / `length_px`, and the OCR'd `label`."""

    pixel_size_um: float
    length_px: int
    label: str
    label_um: float


def _background(strip: np.ndarray) -> float:
    """The strip's most common exact value (a data bar is drawn on a flat background)."""
    values, counts = np.unique(strip, return_counts=True)
    return float(values[counts.argmax()])


def _longest_run(row: np.ndarray) -> tuple[int, int]:
    """(start, stop) of the longest run of True in a 1-D boolean row; (0, 0) if none."""
    edges = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return 0, 0
    best = int(np.argmax(stops - starts))
    return int(starts[best]), int(stops[best])


def _bar_from_component(
    mask: np.ndarray, row_offset: int, col_offset: int, bright: bool
) -> ScaleBarLine | None:
    """The bar in one component's mask, or None when its shape is not a bar."""
    runs = [_longest_run(row) for row in mask]
    lengths = np.array([stop - start for start, stop in runs])
    longest = int(lengths.max())
    # Rows reaching (nearly) the full length; 2 % slack for anti-aliased ends.
    full = np.flatnonzero(lengths >= longest - max(1, round(0.02 * longest)))
    thickness = int(full.size)
    if full[-1] - full[0] + 1 != thickness:  # two separate long edges: a box, not a bar
        return None
    if longest < 4 * thickness:
        return None
    start, stop = runs[int(full[np.argmax(lengths[full])])]
    return ScaleBarLine(
        row0=row_offset,
        row1=row_offset + mask.shape[0],
        col0=col_offset + start,
        col1=col_offset + stop,
        thickness_px=thickness,
        bright=bright,
    )


def find_scale_bar(bar_pixels: np.ndarray, min_length_px: int = 10) -> ScaleBarLine | None:
    """The longest horizontal scale bar in a data-bar strip, or None.

    Parameters
    ----------
    bar_pixels : ndarray
        2-D data-bar strip (the bottom rows of an SEM image), drawn on a flat background.
    min_length_px : int
        Shortest bar accepted.

    Returns
    -------
    ScaleBarLine or None
        A filled bar (several rows thick) or a line with end ticks, white on black or
        black on white/grey; its length end to end. Shapes spanning 90 % of the strip
        width (borders, separators) and box outlines are not bars.
    """
    strip = np.asarray(bar_pixels)
    if strip.ndim != 2 or strip.shape[1] < min_length_px or strip.size == 0:
        return None
    background = _background(strip)
    values = strip.astype(np.float32)
    found: list[ScaleBarLine] = []
    for bright, extreme in ((True, float(values.max())), (False, float(values.min()))):
        if extreme == background:
            continue
        middle = (background + extreme) / 2
        mask = values > middle if bright else values < middle
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            rows, cols = box
            width = cols.stop - cols.start
            if width < min_length_px or width >= 0.9 * strip.shape[1] or width < 2 * (rows.stop - rows.start):
                continue
            line = _bar_from_component(labels[box] == index, rows.start, cols.start, bright)
            if line is not None and line.length_px >= min_length_px:
                found.append(line)
    if not found:
        return None
    return max(found, key=lambda line: (line.length_px, line.thickness_px))


def parse_scale_label(text: str | None) -> float | None:
    """A scale-bar label ("10 µm", "10µm", "10 um", "500 nm", "0.5 mm") in µm, or None.

    The whole text must be one number and one length unit (nm, µm written µ/μ/u, mm,
    micron); anything else (two numbers, "kV", a bare number) is None rather than a guess,
    and so are nm and µm values over 1000 (a scale bar would use the next unit).
    """
    if not text:
        return None
    t = text.strip().lower().replace("\u00b5", "u").replace("\u03bc", "u")
    match = _LABEL.fullmatch(t)
    if match is None:
        return None
    value = float(match.group(1).replace(",", "."))
    unit = match.group(2)
    scale = unit_to_um(unit)
    if scale is None or value <= 0 or (unit in ("nm", "um") and value > _MAX_LABEL_VALUE):
        return None
    return value * scale


# Decode threads (`fracscope.io.prefetch`) may ask at once; the warning is given once.
_OCR_LOCK = threading.Lock()


def _tesseract() -> ModuleType | None:
    """pytesseract when it and the tesseract binary are usable; else None, warned about once per process."""
    with _OCR_LOCK:
        return _load_tesseract()


@functools.cache
def _load_tesseract() -> ModuleType | None:
    try:
        import pytesseract

        pytesseract.get_tesseract_version()
    except Exception as exc:  # noqa: BLE001 - ImportError, TesseractNotFoundError, OSError
        log.warning(
            "scale-bar OCR unavailable (%s: %s): pixel sizes are not read from scale bars; to enable: %s",
            type(exc).__name__,
            exc,
            OCR_INSTALL_HINT,
        )
        return None
    return pytesseract


def _text_blobs(strip: np.ndarray, line: ScaleBarLine) -> tuple[np.ndarray, list[tuple[slice, slice]], float]:
    """Text mask of the strip (bar removed), the boxes of its text lines/words, glyph height."""
    background = _background(strip)
    values = strip.astype(np.float32)
    contrast = float(np.abs(values - background).max())
    mask = np.abs(values - background) > contrast / 2
    mask[line.row0 : line.row1, max(0, line.col0 - 1) : line.col1 + 1] = False
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = ndimage.find_objects(labels)
    heights = np.array([b[0].stop - b[0].start for b in boxes if b is not None])
    tall = heights[heights >= 3]
    if tall.size == 0:
        return mask, [], 0.0
    glyph_px = float(np.median(tall))
    # Boxes, separators and logos are taller than text: leave them out so they don't join fields.
    for index, box in enumerate(boxes, start=1):
        if box is not None and box[0].stop - box[0].start > 2 * glyph_px:
            mask[box][labels[box] == index] = False
    # Join the glyphs of a word and the words of a label ("10 µm"), not separate fields.
    reach = np.ones((2 * round(0.15 * glyph_px) + 1, 2 * round(0.5 * glyph_px) + 1), bool)
    words, _ = ndimage.label(ndimage.binary_dilation(mask, structure=reach))
    return mask, [b for b in ndimage.find_objects(words) if b is not None], glyph_px


def _label_boxes(strip: np.ndarray, line: ScaleBarLine) -> tuple[np.ndarray, list[tuple[slice, slice]], float]:
    """Text boxes near the bar, nearest first (gap in glyph heights), and the text mask."""
    mask, boxes, glyph_px = _text_blobs(strip, line)
    near: list[tuple[float, tuple[slice, slice]]] = []
    for rows, cols in boxes:
        # The box of the glyphs themselves, not of their dilation.
        sub = mask[rows, cols]
        r = np.flatnonzero(sub.any(axis=1))
        c = np.flatnonzero(sub.any(axis=0))
        if r.size == 0:
            continue
        r0, r1 = rows.start + r[0], rows.start + r[-1] + 1
        c0, c1 = cols.start + c[0], cols.start + c[-1] + 1
        overlaps_cols = c0 < line.col1 and c1 > line.col0
        beside_rows = r0 < line.row1 + glyph_px and r1 > line.row0 - glyph_px
        if r1 <= line.row0 and overlaps_cols:
            gap = line.row0 - r1
        elif r0 >= line.row1 and overlaps_cols:
            gap = r0 - line.row1
        elif beside_rows and c1 <= line.col0:
            gap = line.col0 - c1
        elif beside_rows and c0 >= line.col1:
            gap = c0 - line.col1
        else:
            continue
        if gap <= 3 * glyph_px:
            near.append((gap / glyph_px, (slice(r0, r1), slice(c0, c1))))
    near.sort(key=lambda item: item[0])
    return mask, [box for _, box in near], glyph_px


def _ocr_image(
    strip: np.ndarray,
    box: tuple[slice, slice],
    glyph_px: float,
    text_height_px: int,
    binarise: bool,
    resample: Image.Resampling,
) -> Image.Image:
    """Black text on white, upscaled to `text_height_px`, with a white margin."""
    background = _background(strip)
    ink = np.abs(strip[box].astype(np.float32) - background)
    ink /= max(float(ink.max()), 1e-6)
    scale = max(1.0, text_height_px / max(glyph_px, 1.0))
    h, w = ink.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    big = np.asarray(Image.fromarray(ink, mode="F").resize(size, resample))
    if binarise:
        # Smoothing first gives round outlines instead of the upscaled pixel staircase.
        big = (ndimage.gaussian_filter(big, scale / 2.5) > 0.5).astype(np.float32)
    margin = round(text_height_px / 2)
    page = np.full((size[1] + 2 * margin, size[0] + 2 * margin), 255, np.uint8)
    page[margin : margin + size[1], margin : margin + size[0]] = np.clip(255 - 255 * big, 0, 255).astype(np.uint8)
    return Image.fromarray(page)


def read_scale_label(bar_pixels: np.ndarray, line: ScaleBarLine) -> str | None:
    """OCR text of the scale bar's label, or None (no OCR, no text near the bar).

    The text lines nearest the bar (above, below, left, right) are read in order of
    distance, each prepared up to four ways (`OCR_VARIANTS`); the first text whose
    value (`parse_scale_label`) two preparations agree on is returned. None when no
    text near the bar gives such a value. Needs ``pytesseract`` and the ``tesseract``
    binary; without them the answer is None and one warning per process says how to
    install them.
    """
    tesseract = _tesseract()
    if tesseract is None:
        return None
    strip = np.asarray(bar_pixels)
    _, boxes, glyph_px = _label_boxes(strip, line)
    config = f"--psm 7 -c tessedit_char_whitelist={OCR_WHITELIST}"  # psm 7: one text line
    for box in boxes:
        values_um: list[float] = []
        for variant in OCR_VARIANTS:
            image = _ocr_image(strip, box, glyph_px, *variant)
            text = " ".join(tesseract.image_to_string(image, config=config).split())
            value_um = parse_scale_label(text)
            if value_um is None:
                continue
            if any(math.isclose(value_um, v) for v in values_um):
                return text
            values_um.append(value_um)
    return None


def scale_bar_pixel_size_um(pixels: np.ndarray, bar_rows: int | None = None) -> ScaleBarReading | None:
    """Pixel size in µm read from the scale bar of the data bar at the bottom of `pixels`.

    Parameters
    ----------
    pixels : ndarray
        2-D grey image, data bar included.
    bar_rows : int, optional
        Height of the data bar when already known; found with `find_data_bar` otherwise.

    Returns
    -------
    ScaleBarReading or None
        None when there is no data bar, no bar in it, no readable label, or the
        result is outside `PLAUSIBLE_UM`.
    """
    pixels = np.asarray(pixels)
    rows = find_data_bar(pixels) if bar_rows is None else int(bar_rows)
    if pixels.ndim != 2 or not 0 < rows < pixels.shape[0]:
        return None
    strip = pixels[pixels.shape[0] - rows :]
    line = find_scale_bar(strip)
    if line is None:
        return None
    label = read_scale_label(strip, line)
    label_um = parse_scale_label(label)
    if label is None or label_um is None:
        log.debug("scale bar of %d px found, label unread (%r)", line.length_px, label)
        return None
    value_um = label_um / line.length_px
    lo, hi = PLAUSIBLE_UM
    if not lo <= value_um <= hi:
        return None
    return ScaleBarReading(pixel_size_um=value_um, length_px=line.length_px, label=label, label_um=label_um)
