"""Removal of the information strip ("data bar") that SEMs burn into the bottom of an image.

A data bar is a band of rows at the bottom drawn on a flat background (black, white or
grey) with text, a scale bar and boxes. Its rows are dominated by one exact grey value,
which a noisy SEM image row never is: an image row at 8 bits with shot noise spreads
over tens of grey values, and its most common value holds a few percent of the row.

`find_data_bar` therefore marks a row "flat" when its most common value covers at least
`min_mode_fraction` of it, and reports a bar when the bottom row is flat and a block of
mostly flat rows (text lines may break it) ends at the image bottom, is at most
`max_fraction` of the height, and has non-flat image content above it. An image whose
bottom row is not flat, or that is flat everywhere (a blank or synthetic constant image),
is never cropped.

A bar also carries ink: text and a scale bar in a colour far from its background. A flat band
of image content (a current collector or a smooth region flattened by heavy JPEG compression)
has none: its few other values lie within a few grey levels of its mode. So a block is a bar
only when at least `MIN_INK_FRACTION` of its pixels differ from its most common value by half
the image's grey range or more, or when it is one exact value throughout (padding: nothing to lose).
"""

from __future__ import annotations

import numpy as np


# Text and scale bar cover 3-7 % of a vendor's bar, 3 % still after JPEG at quality 10 (the
# generator's four layouts); a JPEG-flattened collector band of a real Pt-infiltrated image: 0.
MIN_INK_FRACTION = 0.005


def _has_ink(bar: np.ndarray, grey_range: float) -> bool:
    values, counts = np.unique(bar, return_counts=True)
    if values.size == 1:
        return True
    mode = values[counts.argmax()].astype(np.float64)
    far = np.abs(values.astype(np.float64) - mode) >= grey_range / 2
    return counts[far].sum() >= MIN_INK_FRACTION * bar.size


def _mode_fraction(row: np.ndarray) -> float:
    _, counts = np.unique(row, return_counts=True)
    return float(counts.max()) / row.size


def find_data_bar(
    pixels: np.ndarray,
    min_mode_fraction: float = 0.5,
    max_fraction: float = 0.25,
    min_rows: int = 3,
) -> int:
    """Height in rows of a data bar at the bottom of `pixels`; 0 when there is none.

    Parameters
    ----------
    pixels : ndarray
        2-D image.
    min_mode_fraction : float
        A row is flat when its most common exact value covers this fraction of it.
    max_fraction : float
        Largest bar height as a fraction of the image height.
    min_rows : int
        Smallest bar height; thinner flat strips (a black border line) are kept.

    Returns
    -------
    int
        Number of bottom rows that form the bar.
    """
    pixels = np.asarray(pixels)
    height = pixels.shape[0]
    limit = int(height * max_fraction)
    if pixels.ndim != 2 or limit < min_rows:
        return 0
    # Most images have no bar: one row decides that before the whole band is scanned.
    if _mode_fraction(pixels[height - 1]) < min_mode_fraction:
        return 0
    flat = np.array([_mode_fraction(pixels[height - 1 - i]) >= min_mode_fraction for i in range(limit + 1)])
    if not flat[0]:
        return 0
    # Bar top = highest flat row such that >= 90 % of the rows below it are flat
    # (text lines inside the bar may be less flat).
    share = np.cumsum(flat) / np.arange(1, flat.size + 1)
    candidates = np.flatnonzero(flat[:limit] & (share[:limit] >= 0.9))
    if candidates.size == 0:
        return 0
    rows = int(candidates.max()) + 1
    # The content just above the bar must not be flat, or this is a flat image, not a bar.
    above = flat[rows : rows + min_rows]
    if rows < min_rows or rows >= limit or above.size == 0 or above.all():
        return 0
    grey_range = float(pixels.max()) - float(pixels.min())
    if not _has_ink(pixels[height - rows:], grey_range):
        return 0
    return rows


def crop_data_bar(
    pixels: np.ndarray,
    known_rows: int | None = None,
    min_mode_fraction: float = 0.5,
    max_fraction: float = 0.25,
) -> tuple[np.ndarray, int]:
    """Cut the SEM data bar off the bottom of `pixels`.

    Parameters
    ----------
    pixels : ndarray
        2-D image.
    known_rows : int, optional
        The bar height when the file states it (FEI: page height minus
        ``[Image] ResolutionY``); skips detection.
    min_mode_fraction, max_fraction : float
        Detection settings, see `find_data_bar`.

    Returns
    -------
    (ndarray, int)
        The image without the bar (a view), and the number of rows removed.
    """
    if known_rows is not None and 0 < known_rows < pixels.shape[0]:
        rows = int(known_rows)
    else:
        rows = find_data_bar(pixels, min_mode_fraction=min_mode_fraction, max_fraction=max_fraction)
    if rows == 0:
        return pixels, 0
    return pixels[: pixels.shape[0] - rows], rows
