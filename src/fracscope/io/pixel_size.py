"""Pixel size of an SEM page from its file's metadata.

Sources, first present wins (recorded as ``PixelSize.source``):

1. an explicit override                                   -> "override"
2. FEI/Thermo tags 34680/34682, ``[Scan] PixelWidth`` (m)  -> "fei"
3. Zeiss SmartSEM tag 34118, ``AP_IMAGE_PIXEL_SIZE`` /
   ``AP_PIXEL_SIZE`` with a unit                          -> "zeiss"
4. TESCAN tag 50431, ``PixelSizeX=`` (m)                   -> "tescan"
5. ImageJ description ``unit=`` with XResolution           -> "imagej", or
   plain TIFF XResolution with ResolutionUnit cm/inch      -> "tiff_resolution"
6. the microscope's text file beside the image (same name, ``.txt``):
   Hitachi ``[SemImageFile]`` ``PixelSize=`` (nm)         -> "hitachi", or
   JEOL ``$$SM_MICRON_MARKER`` over ``$$SM_MICRON_BAR`` px -> "jeol"
   (for a copy resized from the size the file states, ``DataSize`` /
   ``$CM_FULL_SIZE``, scaled to the copy: `size_for_saved_image`)
7. a COCO ``pixel_size_um`` looked up by file name         -> "coco"
8. the scale bar in the image's data bar (needs the pixels,
   so applied in `fracscope.io.read`; `fracscope.io.scalebar`) -> "scale_bar"
9. nothing                                                  -> "none"

Resolution tags are often written by image editors (72, 96, 300 dpi); such values
give pixel sizes of tens to hundreds of µm, which no SEM image of cathode particles
has, so tag-derived values outside ``PLAUSIBLE_UM`` are ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pixel sizes a tag may claim, in µm: 0.1 pm .. 10 µm (2540 dpi). Anything else is a
# screen/printer dpi or garbage, not an SEM calibration.
PLAUSIBLE_UM: tuple[float, float] = (1e-4, 10.0)

# Length units as written by FEI, Zeiss, ImageJ and TIFF, in µm.
_UNIT_UM: dict[str, float] = {
    "pm": 1e-6,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometers": 1e-3,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometers": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
}

# TIFF ResolutionUnit codes -> µm per unit (1 = no absolute unit).
_RESOLUTION_UNIT_UM: dict[int, float] = {2: 25400.0, 3: 1e4}

TAG_FEI_SFEG = 34680
TAG_FEI_HELIOS = 34682
TAG_ZEISS_SEM = 34118
TAG_TESCAN = 50431

# The text file a Hitachi or JEOL SEM saves beside an image: the image's name with one of these suffixes.
SIDECAR_SUFFIXES: tuple[str, ...] = (".txt", ".TXT")


@dataclass(frozen=True)
class PixelSize:
    """A pixel edge length in µm (None when unknown) and where it came from."""

    value_um: float | None
    source: str = "none"


def unit_to_um(unit: str) -> float | None:
    """µm per one `unit` (nm, µm, micron, um, mm, ...), or None for an unknown unit."""
    u = unit.strip().lower()
    # ImageJ writes the micro sign as the literal escape "\u00B5"; vendors use µ or μ.
    for micro in ("\\u00b5", "\u00b5", "\u03bc"):
        u = u.replace(micro, "u")
    return _UNIT_UM.get(u)


def _plausible(value_um: float | None) -> float | None:
    if value_um is None or not math.isfinite(value_um):
        return None
    lo, hi = PLAUSIBLE_UM
    return float(value_um) if lo <= value_um <= hi else None


def _rational(value: Any) -> float | None:
    """A TIFF RATIONAL (num, den) tuple or a number as float; None when unusable."""
    try:
        if isinstance(value, tuple):
            num, den = value[0], value[1]
            return float(num) / float(den) if den else None
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def fei_pixel_size_um(fei: Mapping[str, Any] | None) -> float | None:
    """``[Scan] PixelWidth`` (metres) of FEI/Thermo metadata in µm; ``[EScan]`` as fallback."""
    if not fei:
        return None
    for section in ("Scan", "EScan"):
        sec = fei.get(section)
        if isinstance(sec, Mapping) and "PixelWidth" in sec:
            try:
                return _plausible(float(sec["PixelWidth"]) * 1e6)
            except (TypeError, ValueError):
                continue
    return None


def fei_image_height_px(fei: Mapping[str, Any] | None) -> int | None:
    """Height of the scanned image without FEI's data bar (``ResolutionY``), if stated."""
    if not fei:
        return None
    for section in ("Image", "Scan"):
        sec = fei.get(section)
        if isinstance(sec, Mapping) and "ResolutionY" in sec:
            try:
                return int(sec["ResolutionY"])
            except (TypeError, ValueError):
                continue
    return None


def zeiss_pixel_size_um(sem: Mapping[str, Any] | None) -> float | None:
    """Pixel size of Zeiss SmartSEM metadata (as parsed by tifffile) in µm.

    tifffile turns ``AP_IMAGE_PIXEL_SIZE\\nImage Pixel Size = 4.9 nm`` into
    ``{'ap_image_pixel_size': ('Image Pixel Size', 4.9, 'nm')}``.
    """
    if not sem:
        return None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = sem.get(key)
        if not isinstance(entry, tuple) or len(entry) < 3:
            continue
        _, value, unit = entry[:3]
        scale = unit_to_um(str(unit))
        if scale is None:
            continue
        try:
            return _plausible(float(value) * scale)
        except (TypeError, ValueError):
            continue
    return None


def tescan_pixel_size_um(payload: Any) -> float | None:
    """``PixelSizeX=`` (metres) of a TESCAN tag 50431 payload in µm.

    TESCAN writes the tag as bytes: a binary part, then ``Key=Value`` text lines.
    """
    if isinstance(payload, (bytes, bytearray)):
        payload = bytes(payload).decode("latin-1")
    if not isinstance(payload, str):
        return None
    match = re.search(r"^\s*PixelSizeX\s*=\s*([-+0-9.eE]+)\s*$", payload, re.MULTILINE)
    try:
        return _plausible(float(match.group(1)) * 1e6) if match else None
    except ValueError:
        return None


def sidecar_image_size_px(text: str) -> tuple[int, int] | None:
    """(width, height) in pixels of the image a Hitachi (``DataSize=1280x960``) or JEOL (``$CM_FULL_SIZE 1280 960``)
    text file describes: the size its pixel size refers to, data bar excluded."""
    match = (re.search(r"^\s*DataSize\s*=\s*(\d+)\s*[xX]\s*(\d+)\s*$", text, re.MULTILINE)
             or re.search(r"^\s*\$+CM_FULL_SIZE\s+(\d+)\s+(\d+)\s*$", text, re.MULTILINE))
    if not match or not int(match.group(1)) or not int(match.group(2)):
        return None
    return int(match.group(1)), int(match.group(2))


def size_for_saved_image(value_um: float, stated_px: tuple[int, int] | None, shape_px: tuple[int, int] | None) -> float:
    """A text file's pixel size for the image as saved (`shape_px` = rows, columns).

    A copy resized as a whole (its width differs from the `stated_px` one and its height matches the same
    factor, with room for a data bar below) has pixels `stated width / saved width` times larger; a crop,
    or an image the size the file states, keeps the stated size.
    """
    if stated_px is None or shape_px is None:
        return value_um
    (full_w, full_h), (rows, cols) = stated_px, shape_px
    if cols == full_w or cols <= 0:
        return value_um
    factor = full_w / cols
    if full_h - 2 * factor <= rows * factor <= 1.3 * full_h + 2 * factor:  # a data bar adds up to ~30 % rows
        return value_um * factor
    return value_um


def hitachi_pixel_size_um(text: str) -> float | None:
    """``PixelSize=`` (nm unless a unit follows) of a Hitachi SEM text file (section ``[SemImageFile]``) in µm."""
    if "[SemImageFile]" not in text:
        return None
    match = re.search(r"^\s*PixelSize\s*=\s*([0-9.eE+-]+)\s*([^\s0-9.]*)\s*$", text, re.MULTILINE)
    if not match:
        return None
    scale = unit_to_um(match.group(2)) if match.group(2) else 1e-3
    try:
        return _plausible(float(match.group(1)) * scale) if scale is not None else None
    except ValueError:
        return None


def jeol_pixel_size_um(text: str) -> float | None:
    """A JEOL SEM text file's scale marker (``$$SM_MICRON_MARKER 1um``) over its length in image pixels
    (``$$SM_MICRON_BAR 120``), in µm."""
    bar = re.search(r"^\s*\$+SM_MICRON_BAR\s+([0-9.]+)\s*$", text, re.MULTILINE)
    marker = re.search(r"^\s*\$+SM_MICRON_MARKER\s+([0-9.]+)\s*([^\s0-9.]+)\s*$", text, re.MULTILINE)
    if not bar or not marker:
        return None
    scale = unit_to_um(marker.group(2))
    try:
        length, bar_px = float(marker.group(1)), float(bar.group(1))
    except ValueError:
        return None
    return _plausible(length * scale / bar_px) if scale is not None and bar_px > 0 else None


def sidecar_pixel_size(path: str | Path, shape_px: tuple[int, int] | None = None) -> PixelSize:
    """Pixel size from the text file a Hitachi or JEOL microscope saves beside the image (same name,
    ``.txt``); ``PixelSize(None, "none")`` when there is none or it states no pixel size.

    With the saved image's `shape_px` (rows, columns), a copy resized from the size the file states gets
    its own pixel size (`size_for_saved_image`)."""
    p = Path(path)
    for suffix in SIDECAR_SUFFIXES:
        sidecar = p.with_suffix(suffix)
        if sidecar.is_file():
            break
    else:
        return PixelSize(None, "none")
    try:
        with open(sidecar, "rb") as f:
            raw = f.read(1_000_000)  # a vendor's file is a few kB of text
    except OSError:
        return PixelSize(None, "none")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    for source, parse in (("hitachi", hitachi_pixel_size_um), ("jeol", jeol_pixel_size_um)):
        value_um = parse(text)
        if value_um is not None:
            return PixelSize(size_for_saved_image(value_um, sidecar_image_size_px(text), shape_px), source)
    return PixelSize(None, "none")


def imagej_pixel_size_um(imagej: Mapping[str, Any] | None, x_resolution: Any) -> float | None:
    """ImageJ calibration: ``unit`` from the description, pixels per unit from XResolution."""
    if not imagej or "unit" not in imagej:
        return None
    scale = unit_to_um(str(imagej["unit"]))
    per_unit = _rational(x_resolution)
    if scale is None or not per_unit:
        return None
    return _plausible(scale / per_unit)


def tiff_resolution_pixel_size_um(x_resolution: Any, resolution_unit: Any) -> float | None:
    """Plain TIFF XResolution with ResolutionUnit inch (2) or centimetre (3), in µm."""
    per_unit = _rational(x_resolution)
    try:
        scale = _RESOLUTION_UNIT_UM.get(int(resolution_unit))
    except (TypeError, ValueError):
        return None
    if scale is None or not per_unit:
        return None
    return _plausible(scale / per_unit)


def coco_pixel_size_um(path: str | Path, coco_pixel_sizes: Mapping[str, float] | None) -> float | None:
    """Look `path` up in a COCO-derived {file_name: pixel_size_um} mapping.

    Keys match the full path, the file name, or a trailing part of the path
    (COCO ``file_name`` is often relative to the image folder).
    """
    if not coco_pixel_sizes:
        return None
    p = Path(path)
    posix = p.as_posix()
    for key in (str(path), posix, p.name):
        if key in coco_pixel_sizes:
            return _plausible(float(coco_pixel_sizes[key]))
    for key, value in coco_pixel_sizes.items():
        k = Path(key).as_posix().lstrip("./")
        if k and posix.endswith("/" + k):
            return _plausible(float(value))
    return None


def tiff_page_pixel_size(page: Any, imagej: Mapping[str, Any] | None) -> PixelSize:
    """Pixel size from the tags of one tifffile page (steps 2-5 of the precedence)."""
    tags = page.tags
    fei: dict[str, Any] = {}
    for code in (TAG_FEI_SFEG, TAG_FEI_HELIOS):
        value = tags.valueof(code)
        if isinstance(value, Mapping):
            fei.update(value)
    value_um = fei_pixel_size_um(fei)
    if value_um is not None:
        return PixelSize(value_um, "fei")
    sem = tags.valueof(TAG_ZEISS_SEM)
    value_um = zeiss_pixel_size_um(sem if isinstance(sem, Mapping) else None)
    if value_um is not None:
        return PixelSize(value_um, "zeiss")
    value_um = tescan_pixel_size_um(tags.valueof(TAG_TESCAN))
    if value_um is not None:
        return PixelSize(value_um, "tescan")
    x_res = tags.valueof(282)  # XResolution
    value_um = imagej_pixel_size_um(imagej, x_res)
    if value_um is not None:
        return PixelSize(value_um, "imagej")
    value_um = tiff_resolution_pixel_size_um(x_res, tags.valueof(296))  # ResolutionUnit
    if value_um is not None:
        return PixelSize(value_um, "tiff_resolution")
    return PixelSize(None, "none")
