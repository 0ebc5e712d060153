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

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from fracscope.crop import intensity_range, scale_intensity
from fracscope.model_file import MetadataError, SectionMetadata
from fracscope.phase_map import MAX_PERCENTILE_SAMPLES, footprint_max
from fracscope.types import SECTION_CHANNELS, Phase

__all__ = ["SECTION_CHANNELS", "SectionNetModel", "SectionWindow", "section_input", "section_inputs",
           "image_grey_range", "sections_of_image"]


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


def section_inputs(pixels: np.ndarray, instances: np.ndarray, phases: np.ndarray, ids: Sequence[int],
                   window: SectionWindow = SectionWindow()) -> np.ndarray:
    """float32 (len(ids), 4, S, S): the input of each instance id of a label map (`sections_of_image`, the one
    way windows are built, for training as at inference).

    pixels: the image's grey levels as read (normalised here, as in `sections_of_image`); instances: label map;
    phases: `Phase` codes.
    """
    instances = np.asarray(instances)
    boxes = ndi.find_objects(instances) if len(ids) else []
    sections = []
    for pid in ids:
        box = boxes[int(pid) - 1] if 0 < int(pid) <= len(boxes) else None
        if box is None:
            raise ValueError(f"instance {pid} is not in the label map")
        sections.append(((box[0].start, box[1].start, box[0].stop, box[1].stop), instances[box] == pid))
    return sections_of_image(pixels, phases, sections, window)


def image_grey_range(pixels: np.ndarray) -> tuple[float, float]:
    """The grey levels that the section windows of an image map to 0 and 1 (`fracscope.crop.intensity_range`)."""
    return intensity_range(pixels, max_samples=MAX_PERCENTILE_SAMPLES)


def sections_of_image(pixels: np.ndarray, inside_codes: np.ndarray,
                      sections: Sequence[tuple[tuple[int, int, int, int], np.ndarray]],
                      window: SectionWindow = SectionWindow(),
                      grey_range: tuple[float, float] | None = None) -> np.ndarray:
    """float32 (N, 4, S, S): the input of each section (box (r0, c0, r1, c1), its mask there) of a whole image.

    The grey level is the image's percentile range (`grey_range`, default `image_grey_range`: as
    `fracscope.crop.normalize_intensity` of the whole image, what the training windows carry) applied box by
    box, so no float copy of a large image is made. Each box is first tightened to its mask's own bounding box,
    as the training windows' boxes are (a detected box may be wider than the trimmed outline it holds).
    inside_codes: the phase model's codes (`fracscope.phases.ImagePhaseCodes.inside`).
    """
    size = int(window.size_px)
    out = np.zeros((len(sections), len(SECTION_CHANNELS), size, size), np.float32)
    if not len(sections):
        return out
    grey_range = grey_range or image_grey_range(pixels)
    for k, ((r0, c0, _, _), mask) in enumerate(sections):
        rows, cols = np.flatnonzero(np.any(mask, axis=1)), np.flatnonzero(np.any(mask, axis=0))
        if not rows.size:
            raise ValueError(f"section {k} has an empty mask")
        mask = np.asarray(mask, bool)[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        r0, c0 = r0 + int(rows[0]), c0 + int(cols[0])
        r1, c1 = r0 + mask.shape[0], c0 + mask.shape[1]
        out[k] = section_input(scale_intensity(pixels[r0:r1, c0:c1], grey_range), mask, inside_codes[r0:r1, c0:c1],
                               window)
    return out


class SectionNetModel:
    """The section net file (``fracscope_sections``): class probabilities of section windows, in onnxruntime.

    The window it was trained with comes from the file (`SectionWindow.from_metadata`), so inputs built with
    `window` are what the net saw in training. onnxruntime is imported here, not with the module.
    """

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", threads: int | None = None) -> None:
        from fracscope.assets import resolve_section_model
        from fracscope.model_file import open_onnx_session

        self.model_path = Path(resolve_section_model(model_path))
        if not self.model_path.is_file():
            raise FileNotFoundError(f"section net not found: {self.model_path}")
        self._session, self.metadata = open_onnx_session(self.model_path, SectionMetadata, device, threads)
        self.window = SectionWindow.from_metadata(self.metadata)

    @functools.cached_property
    def sha256(self) -> str:
        """The model file's SHA-256 (provenance, resume checks)."""
        from fracscope.model_file import sha256_of

        return sha256_of(self.model_path)

    def predict(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 (N, 3) class probabilities (``metadata.class_names`` order) of section inputs (N, 4, S, S)."""
        from fracscope.model_file import SECTIONS_INPUT_NAME, SECTIONS_OUTPUT_NAMES

        x = np.asarray(inputs, np.float32)
        size = int(self.window.size_px)
        if x.ndim != 4 or x.shape[1:] != (len(SECTION_CHANNELS), size, size):
            raise ValueError(f"expected section inputs (N, {len(SECTION_CHANNELS)}, {size}, {size}), got {x.shape}")
        out = np.zeros((len(x), len(self.metadata.class_names)), np.float32)
        for i in range(0, len(x), batch_size):
            (probs,) = self._session.run(list(SECTIONS_OUTPUT_NAMES),
                                         {SECTIONS_INPUT_NAME: np.ascontiguousarray(x[i:i + batch_size])})
            out[i:i + len(probs)] = probs
        return out
