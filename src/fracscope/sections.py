"""The section window: what the section net (issue 18) sees of one particle section.

A section's input is a square window centred on its mask's bounding box, of side
``max(ceil(margin x the box's longer side), size_px)`` source pixels, shrunk to ``size_px``
pixels square, four channels (`SECTION_CHANNELS`):

- ``grey``: the image's grey level inside the mask, 0 outside (area mean); the grey level is
  `fracscope.crop.normalize_intensity` of the WHOLE image, as the crop model sees it;
- ``mask``: the section's own mask (area mean: the share of each window pixel it covers);
- ``pore``: the share of each window pixel that is pore inside the mask (area mean);
- ``crack``: 1 where any source pixel of the footprint is crack inside the mask (footprint
  max, `fracscope.phase_map.footprint_max`), so a crack one source pixel wide survives any
  shrink as a line of window pixels.

Everything is zero outside the mask, so the mask's box is all a section needs: `section_input`
works on box-local arrays and pads them to the square window. numpy and cv2 only: inference
(onnxruntime) must not need torch. Prototype and measurements: ``bench/section_net.py`` and
docs/BENCHMARKS.md (issue 18).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from fracscope.model_file import MetadataError, SectionMetadata
from fracscope.phase_map import footprint_max
from fracscope.types import SECTION_CHANNELS, Phase

__all__ = ["SECTION_CHANNELS", "SectionWindow", "section_input", "section_inputs"]


@dataclass(frozen=True)
class SectionWindow:
    """The window of one section: output side `size_px` (px), side / the mask box's longer side `margin`."""

    size_px: int = 64
    margin: float = 1.15
    channels: tuple[str, ...] = SECTION_CHANNELS

    def __post_init__(self) -> None:
        if int(self.size_px) < 8:
            raise ValueError(f"size_px must be at least 8, got {self.size_px}")
        if not float(self.margin) >= 1.0:
            raise ValueError(f"margin must be >= 1 (the window holds the whole mask box), got {self.margin}")
        if tuple(self.channels) != SECTION_CHANNELS:
            raise ValueError(f"channels must be {SECTION_CHANNELS}, got {tuple(self.channels)}")

    @classmethod
    def from_metadata(cls, meta: SectionMetadata) -> SectionWindow:
        """The window a section-net file was trained with: inference builds its inputs with it."""
        try:
            return cls(int(meta.size_px), float(meta.margin), tuple(meta.channels))
        except ValueError as err:
            raise MetadataError(f"invalid section window in model metadata: {err}") from err

    def side_px(self, box_rows: int, box_cols: int) -> int:
        """Window side in source pixels of a mask box of `box_rows` x `box_cols` px: never below `size_px`,
        so a small section is padded, not enlarged."""
        return max(int(math.ceil(max(int(box_rows), int(box_cols)) * float(self.margin))), int(self.size_px))


def _square(arr: np.ndarray, side: int) -> np.ndarray:
    """`arr` (h, w) centred in a zero square of `side` (the same split as the prototype: the extra pixel of an
    odd padding goes before)."""
    h, w = arr.shape
    top, left = -((h - side) // 2), -((w - side) // 2)
    out = np.zeros((side, side), arr.dtype)
    out[top:top + h, left:left + w] = arr
    return out


def _area(arr: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(np.asarray(arr, np.float32), (size, size), interpolation=cv2.INTER_AREA)


def section_input(grey_box: np.ndarray, mask_box: np.ndarray, phases_box: np.ndarray,
                  window: SectionWindow = SectionWindow()) -> np.ndarray:
    """float32 (4, S, S) input of one section from its box-local arrays (see the module docstring).

    grey_box: normalised grey levels (`fracscope.crop.normalize_intensity` of the whole image) over the
    mask's bounding box; mask_box: the section's own mask there (bool); phases_box: `Phase` codes there.
    """
    mask = np.asarray(mask_box, bool)
    if mask.ndim != 2 or np.shape(grey_box) != mask.shape or np.shape(phases_box) != mask.shape:
        raise ValueError(f"grey, mask and phases boxes must be the same 2-D shape, got {np.shape(grey_box)}, "
                         f"{mask.shape}, {np.shape(phases_box)}")
    if not mask.any():
        raise ValueError("the section's mask is empty")
    side = window.side_px(*mask.shape)
    size = int(window.size_px)
    m = _square(mask, side)
    codes = np.where(m, _square(np.asarray(phases_box, np.uint8), side), 0)
    grey = _square(np.asarray(grey_box, np.float32), side) * m
    return np.stack([_area(grey, size), _area(m, size), _area(codes == Phase.PORE, size),
                     footprint_max((codes == Phase.CRACK).astype(np.float32), (size, size))]).astype(np.float32)


def section_inputs(grey: np.ndarray, instances: np.ndarray, phases: np.ndarray, ids: Sequence[int],
                   window: SectionWindow = SectionWindow()) -> np.ndarray:
    """float32 (len(ids), 4, S, S): `section_input` of each instance id of a whole image's arrays.

    grey: `fracscope.crop.normalize_intensity` of the image; instances: label map; phases: `Phase` codes.
    """
    size = int(window.size_px)
    out = np.zeros((len(ids), len(SECTION_CHANNELS), size, size), np.float32)
    if not len(ids):
        return out
    boxes = ndi.find_objects(np.asarray(instances))
    for k, pid in enumerate(ids):
        box = boxes[int(pid) - 1] if 0 < int(pid) <= len(boxes) else None
        if box is None:
            raise ValueError(f"instance {pid} is not in the label map")
        out[k] = section_input(grey[box], instances[box] == pid, phases[box], window)
    return out
