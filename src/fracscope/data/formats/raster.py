"""Reading the rasters of a dataset (images, label maps, phase maps) and writing phase PNGs.

Kept apart from `fracscope.io` because datasets need exact round trips of label maps
and phase PNGs; the pixel size is read by `fracscope.io`'s one reader of SEM tags, and
TIFFs are written by `fracscope.io.tiff`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

from fracscope.io.pixel_size import tiff_page_pixel_size

IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


def pick_pixel_size(
    override: float | None,
    tiff_px: float | None,
    json_px: float | None = None,
    json_source: str = "coco",
    tiff_source: str = "tiff_resolution",
) -> tuple[float | None, str]:
    """Pixel size of a dataset image and its source: override, then the annotation file, then the TIFF tags."""
    if override is not None:
        return float(override), "override"
    if json_px is not None:
        return float(json_px), json_source
    if tiff_px is not None:
        return float(tiff_px), tiff_source
    return None, "none"


def is_image_file(path: Path) -> bool:
    """True for a regular file with a raster image suffix."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _to_gray(arr: np.ndarray, path: Path) -> np.ndarray:
    """Collapse an (H, W, 3|4) colour array (BGR order from cv2) to one channel."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_BGR2GRAY)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}")
    return arr


def _cv2_read(path: Path) -> np.ndarray:
    # np.fromfile + imdecode also works for non-ASCII paths, unlike cv2.imread.
    arr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"{path}: not a readable image")
    return arr


def read_image(path: Path, keep_pages: bool = False) -> tuple[np.ndarray, float | None]:
    """Read a grayscale image and the pixel size stored in it.

    Parameters
    ----------
    path : Path
        TIFF, PNG, JPEG or BMP file.
    keep_pages : bool
        Keep all pages of a multi-page TIFF as a (pages, H, W) array; otherwise
        only the first page is returned.

    Returns
    -------
    pixels : ndarray
        As stored (uint8, uint16 or float); colour is collapsed to gray.
    pixel_size_um : float or None
        From the TIFF tags (`fracscope.io.pixel_size.tiff_page_pixel_size`); None for other formats.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            arr = tif.asarray()
            # One reader of SEM calibrations for the whole package: FEI, Zeiss, ImageJ, TIFF resolution.
            px = tiff_page_pixel_size(tif.pages[0], tif.imagej_metadata).value_um
            is_rgb = tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        if is_rgb:
            arr = arr[..., ::-1]  # to BGR, the order _to_gray expects
        if arr.ndim == 3 and not is_rgb and not keep_pages:
            arr = arr[0]
        return (arr if (keep_pages and not is_rgb) else _to_gray(arr, path)), px
    return _to_gray(_cv2_read(path), path), None


def read_label_image(path: Path) -> np.ndarray:
    """Read an instance label image as uint32 (0 = no particle).

    Float label images (Fiji writes 32-bit float) are accepted when every value
    is a non-negative integer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label image not found: {path}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        arr = tifffile.imread(path)
    else:
        arr = _cv2_read(path)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"{path}: a label image must be 2-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{path}: label image holds non-integer values")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{path}: label image holds negative values")
    return arr.astype(np.uint32)


def read_phase_map(path: Path) -> np.ndarray:
    """Read a uint8 phase map (codes 0-3) from PNG or TIFF."""
    path = Path(path)
    arr = tifffile.imread(path) if path.suffix.lower() in TIFF_SUFFIXES else _cv2_read(path)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"{path}: a phase map must be 2-D, got shape {arr.shape}")
    if arr.size and int(arr.max()) > 3:
        raise ValueError(f"{path}: phase codes must be 0-3 (matrix, solid, pore, crack); max is {arr.max()}")
    return arr.astype(np.uint8)


def write_png(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 or uint16 2-D array as PNG (lossless)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    buf.tofile(str(path))
