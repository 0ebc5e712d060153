"""Slice alignment: drift between FIB-SEM slices by phase cross-correlation.

Each slice is registered to the one before it with `skimage.registration.phase_cross_correlation`
on a central window. The whole-pixel shift comes from its masked form (normalised
cross-correlation over the overlapping area, Padfield 2012) of lightly smoothed windows:
it stays exact when the drift is large against the window or strong features sit at its
edges, where plain phase correlation of a tapered window is pulled towards zero. A step
larger than ``max_step_px`` is not believed (a slice that changes too much, such as the cap
of a particle whose section grows fast, has no reliable drift) and counts as zero. With
``upsample_factor`` > 1 the remaining sub-pixel shift is measured by upsampled
cross-correlation of the pre-aligned raw pair.

The shifts add up to a drift per slice relative to slice 0, which stays fixed.
`AlignedStack` applies the drift on the fly as slices are read, so no aligned copy of the
stack is ever written.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from fracscope.pores3d.stack import Stack

log = logging.getLogger(__name__)


def _central_window(pixels: np.ndarray, crop_px: int) -> np.ndarray:
    h, w = pixels.shape
    ch, cw = min(h, crop_px), min(w, crop_px)
    r0, c0 = (h - ch) // 2, (w - cw) // 2
    win = pixels[r0 : r0 + ch, c0 : c0 + cw].astype(np.float32)
    return win - win.mean()


def register_pair(reference: np.ndarray, moving: np.ndarray, upsample_factor: int = 1,
                  smooth_px: float = 2.0, max_step_px: float = 8.0) -> np.ndarray | None:
    """(dy, dx) that moves `moving` onto `reference` (``ndi.shift(moving, shift)``).

    Parameters
    ----------
    reference, moving : ndarray, shape (H, W)
        Two consecutive slices (or central windows of them).
    upsample_factor : int
        1: whole pixels; k: refined to 1/k pixel.
    smooth_px : float
        Gaussian sigma applied for the whole-pixel step only: pixel noise differs from
        slice to slice, and smoothing leaves the structure to correlate (the refinement,
        where blur would bias, sees the raw pair).
    max_step_px : float
        Larger shifts are not believed.

    Returns
    -------
    ndarray of float64, shape (2,), or None
        (0, 0) for a featureless image (one grey value, e.g. blank embedding); None when
        the best match lies further than `max_step_px`.
    """
    if np.ptp(reference) == 0 or np.ptp(moving) == 0:
        return np.zeros(2)
    ref, mov = reference, moving
    if smooth_px > 0:
        ref, mov = ndi.gaussian_filter(reference, smooth_px), ndi.gaussian_filter(moving, smooth_px)
    full = np.ones(reference.shape, bool)
    shift, _, _ = phase_cross_correlation(ref, mov, reference_mask=full, moving_mask=full)
    shift = np.asarray(shift, dtype=np.float64)
    if np.abs(shift).max() > max_step_px:
        return None
    if upsample_factor > 1:
        # Pre-aligned to the pixel, the pair differs by less than a pixel: plain (unwhitened,
        # untapered) upsampled cross-correlation measures that without a taper's pull to zero.
        moved = ndi.shift(moving, shift, order=0, mode="nearest")
        fine, _, _ = phase_cross_correlation(reference, moved, upsample_factor=int(upsample_factor), normalization=None)
        if np.all(np.abs(fine) <= 1.0):  # a refinement, never a new answer
            shift = shift + fine
    return shift


def estimate_drift(stack: Stack, upsample_factor: int = 1, crop_px: int = 384, chunk_z: int = 16,
                   smooth_px: float = 2.0, max_step_px: float = 8.0) -> np.ndarray:
    """Shift that registers each slice to slice 0.

    Parameters
    ----------
    stack : Stack
        Read once, in chunks of `chunk_z` slices.
    upsample_factor : int
        1 gives whole-pixel shifts; k gives shifts to 1/k pixel.
    crop_px : int
        Side of the central window correlated (bounds the cost on large slices).
    smooth_px, max_step_px : see `register_pair`.

    Returns
    -------
    ndarray of float64, shape (Z, 2)
        (dy, dx) in pixels per slice; ``ndi.shift(slice, shifts[z])`` moves slice z onto
        slice 0. Row 0 is (0, 0). A blank slice (one grey value) adds no shift.
    """
    n = stack.shape[0]
    shifts = np.zeros((n, 2), np.float64)
    prev = None
    n_refused = 0
    for z0, z1 in stack.chunks(chunk_z):
        block = stack.read(z0, z1)
        for i, z in enumerate(range(z0, z1)):
            win = _central_window(block[i], crop_px)
            if prev is not None:
                step = register_pair(prev, win, upsample_factor, smooth_px, max_step_px)
                if step is None:
                    n_refused += 1
                    step = np.zeros(2)
                shifts[z] = shifts[z - 1] + step
            prev = win
    if n_refused:
        log.warning("%d of %d slice steps exceeded max_step_px=%g and were taken as 0", n_refused, n - 1, max_step_px)
    return shifts


def shift_slice(pixels: np.ndarray, shift_yx: tuple[float, float] | np.ndarray) -> np.ndarray:
    """Move a slice by (dy, dx) pixels; edges are repeated into the uncovered border.

    Whole-pixel shifts copy values exactly; fractional ones interpolate linearly and
    round back to the slice's type.
    """
    dy, dx = (float(v) for v in shift_yx)
    if dy == 0 and dx == 0:
        return pixels
    if dy.is_integer() and dx.is_integer():
        return ndi.shift(pixels, (dy, dx), order=0, mode="nearest")
    out = ndi.shift(pixels.astype(np.float32), (dy, dx), order=1, mode="nearest")
    if pixels.dtype.kind in "ui":
        info = np.iinfo(pixels.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(pixels.dtype)
    return out.astype(pixels.dtype)


class AlignedStack(Stack):
    """A stack read through per-slice shifts (from `estimate_drift`)."""

    def __init__(self, stack: Stack, shifts: np.ndarray) -> None:
        shifts = np.asarray(shifts, dtype=np.float64)
        if shifts.shape != (stack.shape[0], 2):
            raise ValueError(f"shifts must have shape ({stack.shape[0]}, 2), got {shifts.shape}")
        self.base = stack
        self.shifts = shifts
        self.shape = stack.shape
        self.dtype = stack.dtype
        self.voxel_size = stack.voxel_size
        self.source = stack.source

    def read(self, z0: int, z1: int) -> np.ndarray:
        block = self.base.read(z0, z1)
        for i, z in enumerate(range(z0, z1)):
            block[i] = shift_slice(block[i], self.shifts[z])
        return block

    def close(self) -> None:
        self.base.close()
