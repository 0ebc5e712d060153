"""The dense phase model on the image grid: a phase probability for every pixel of an SEM image.

`PhaseMapModel.predict(pixels, pixel_size_um)` runs an exported `PhaseNet`
(`fracscope.export.export_phases`, metadata `fracscope.model_file.PhaseMetadata`):

1. the image is resampled to the model's working pixel size with `to_working_scale` (area
   averaging down, bilinear up), as the training fields were;
2. it is normalised by the stored percentiles over the whole working image
   (`fracscope.crop.intensity_range` of the grey levels as they are where nothing is resampled).
   Above `MAX_PERCENTILE_SAMPLES` pixels the two percentiles
   come from a regular subsample (`fracscope.crop.strided_sample`) so that their sort stays bounded;
3. the network runs tile by tile (`fracscope.detect.tiling.TileGrid`): tiles of ``tile_px`` to
   ``tile_px`` + 64 working px (per image the side that computes the fewest pixels, `cheapest_grid`)
   overlapping by at least ``overlap_px``, laid on the 32-px block grid so every
   tile meets the encoder's strides in the same phase as one whole-image pass would. A tile
   at the image's bottom or right edge is padded to a multiple of 32 by edge replication;
   each tile contributes only its core (the cores partition the image);
4. the probabilities go back to the image grid per channel: bilinear when enlarging (working
   px coarser than image px); when shrinking, area averaging, except for crack, which takes
   the maximum over each image pixel's footprint so that a crack one working px wide
   survives; the channels are then rescaled to sum to 1 (argmax unchanged).

Tiled is not bit-identical to one pass: a tile's zero padding stands where the neighbours'
pixels would be, and MobileNet-V3's squeeze-and-excitation blocks average every channel over
their whole input, i.e. over the tile (training saw 256 px tiles, so a tile is closer to
training than a whole field). tests/test_phase_map.py measures the agreement.

Memory: the working image, the output (P, H, W) and, when the scales differ, the
probabilities at working scale, each linear in the pixel count; the network's activations are
bounded by one tile.
"""

from __future__ import annotations

import functools

import math
from pathlib import Path

import numpy as np

from fracscope.crop import intensity_range, scale_intensity
from fracscope.detect.learned import check_enlargement, pad_to_multiple, to_working_scale
from fracscope.detect.tiling import TileGrid
from fracscope.model_file import PHASES_INPUT_NAME, PHASES_OUTPUT_NAMES, PhaseMetadata, open_onnx_session, sha256_of
from fracscope.phases import ImagePhaseCodes, codes_from_probs

#: Largest working image whose normalisation percentiles are taken over every pixel (16.8 Mpx,
#: e.g. 4096 x 4096); larger ones use a strided subsample of at most this many pixels.
MAX_PERCENTILE_SAMPLES = 1 << 24


def _footprint_max_1d(arr: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Resize `arr` along `axis` to `n_out`: each output pixel is the max over the input pixels
    its footprint touches (the footprint INTER_AREA averages over)."""
    n_in = arr.shape[axis]
    f = n_in / n_out
    i = np.arange(n_out)
    starts = np.floor(i * f + 1e-6).astype(np.int64)
    ends = np.clip(np.ceil((i + 1) * f - 1e-6).astype(np.int64), starts + 1, n_in)
    out = np.take(arr, starts, axis=axis)
    for k in range(1, int((ends - starts).max())):
        np.maximum(out, np.take(arr, np.minimum(starts + k, ends - 1), axis=axis), out=out)
    return out


def footprint_max(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Shrink a 2-D map to `shape`, each pixel the max over its footprint (thin ridges survive)."""
    return _footprint_max_1d(_footprint_max_1d(np.asarray(arr, np.float32), int(shape[0]), 0), int(shape[1]), 1)


def probabilities_to_grid(probs: np.ndarray, shape: tuple[int, int], crack_index: int) -> np.ndarray:
    """(P, h, w) probabilities at working scale → (P, H, W) on the image grid (see the module docstring)."""
    import cv2

    n, h, w = probs.shape
    rows, cols = int(shape[0]), int(shape[1])
    if (h, w) == (rows, cols):
        return probs
    shrink = h >= rows and w >= cols
    out = np.empty((n, rows, cols), np.float32)
    for k in range(n):
        if shrink and k == crack_index:
            out[k] = footprint_max(probs[k], (rows, cols))
        else:
            out[k] = cv2.resize(probs[k], (cols, rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if shrink:  # the crack maximum lifts the sum above 1
        out /= out.sum(axis=0, keepdims=True)
    return out


# Tile sides (in blocks) tried above the file's `tile_px`: the one that computes the fewest pixels for an
# image is used (a 2048 x 1536 field: 576 px tiles compute 1.27x its pixels, 512 px ones 1.67x).
TILE_STEPS_ABOVE = 2


def cheapest_grid(shape: tuple[int, int], tile: int, overlap: int) -> TileGrid:
    """The `TileGrid` of `shape` (blocks) with a tile of `tile` … `tile + TILE_STEPS_ABOVE` blocks that covers
    the fewest blocks in all (the smallest tile on a tie)."""
    grids = [TileGrid(shape, t, overlap) for t in range(tile, tile + TILE_STEPS_ABOVE + 1)]
    return min(grids, key=lambda g: (sum((b.bbox[2] - b.bbox[0]) * (b.bbox[3] - b.bbox[1]) for b in g), g.tile))


class PhaseMapModel:
    """The dense phase model: phase probabilities on an image's own pixel grid.

    Parameters
    ----------
    model_path : str or Path, optional
        The ``.onnx`` with ``fracscope_phases`` metadata; None or "default": the shipped
        ``models/fracscope_phases.onnx``.
    device : str
        'cpu', 'cuda' or 'cuda:N' (CUDA needs onnxruntime-gpu).
    threads : int, optional
        onnxruntime intra-op threads (None = its default).
    tile_px, overlap_px : int, optional
        Smallest tile side and smallest overlap at working scale (multiples of the model's
        ``pad_multiple``, 32); default: the values stored in the model file (512 and 64). Each image
        is tiled with the side of ``tile_px`` … ``tile_px`` + 64 that computes the fewest pixels.

    Examples
    --------
    >>> model = PhaseMapModel("phases.onnx")                       # doctest: +SKIP
    >>> probs = model.predict(image.pixels, image.pixel_size_um)    # (4, H, W)   # doctest: +SKIP
    """

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", threads: int | None = None,
                 tile_px: int | None = None, overlap_px: int | None = None) -> None:
        from fracscope.assets import resolve_phase_model

        self.model_path = Path(resolve_phase_model(model_path))
        if not self.model_path.is_file():
            raise FileNotFoundError(f"phase model not found: {self.model_path}")
        self._session, self.metadata = open_onnx_session(self.model_path, PhaseMetadata, device, threads)
        self.device = device
        multiple = int(self.metadata.pad_multiple)
        self.tile_px = int(tile_px if tile_px is not None else self.metadata.tile_px)
        self.overlap_px = int(overlap_px if overlap_px is not None else self.metadata.overlap_px)
        if self.tile_px < multiple or self.tile_px % multiple or self.overlap_px % multiple:
            raise ValueError(f"tile_px ({self.tile_px}) and overlap_px ({self.overlap_px}) must be multiples of "
                             f"{multiple}, tile_px at least {multiple}")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ValueError(f"need 0 <= overlap_px < tile_px, got {self.overlap_px}, {self.tile_px}")
        self.crack_index = self.metadata.phase_names.index("crack")

    @property
    def working_pixel_size_um(self) -> float:
        return float(self.metadata.working_pixel_size_um)

    @functools.cached_property
    def sha256(self) -> str:
        """The model file's SHA-256 (provenance, resume checks)."""
        return sha256_of(self.model_path)

    def predict(self, pixels: np.ndarray, pixel_size_um: float) -> np.ndarray:
        """float32 (P, H, W) phase probabilities of a grey image (H, W) on its own pixel grid.

        Channels follow ``metadata.phase_names`` (background, solid, pore, crack); they sum
        to 1 at every pixel.
        """
        pixels = np.asarray(pixels)
        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
        if not (math.isfinite(float(pixel_size_um)) and float(pixel_size_um) > 0):
            raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um}")
        scale = check_enlargement(pixel_size_um, self.working_pixel_size_um, "phase model")
        work = to_working_scale(pixels, scale)
        # The percentiles of the grey levels as they are where nothing was resampled: 8/16-bit images then
        # take the histogram's fast path (`crop.intensity_range`; ~60 ms less per 3 Mpx field).
        source = pixels if work.shape == pixels.shape else work
        work = scale_intensity(work, intensity_range(source, *self.metadata.percentiles,
                                                     max_samples=MAX_PERCENTILE_SAMPLES))
        probs = self.predict_working(work)
        del work
        return probabilities_to_grid(probs, pixels.shape, self.crack_index)

    def predict_codes(self, pixels: np.ndarray, pixel_size_um: float) -> ImagePhaseCodes:
        """The phase of every pixel (`fracscope.phases.ImagePhaseCodes`): the most likely phase of
        `predict`, the pore probability weighted by the file's ``pore_decision_weight``."""
        return codes_from_probs(self.predict(pixels, pixel_size_um), float(self.metadata.pore_decision_weight))

    def predict_working(self, work: np.ndarray) -> np.ndarray:
        """float32 (P, h, w) probabilities of a normalised working-scale image, tile by tile.

        The grid is a `TileGrid` over 32-px blocks (tile starts stay multiples of 32); a tile
        at least as large as the image gives one whole-image pass.
        """
        m = int(self.metadata.pad_multiple)
        h, w = work.shape
        grid = cheapest_grid((-(-h // m), -(-w // m)), self.tile_px // m, self.overlap_px // m)
        out = np.empty((len(self.metadata.phase_names), h, w), np.float32)
        for tile in grid:
            r0, c0, r1, c1 = (min(v * m, lim) for v, lim in zip(tile.bbox, (h, w, h, w), strict=True))
            k0, l0, k1, l1 = (min(v * m, lim) for v, lim in zip(tile.core, (h, w, h, w), strict=True))
            x = np.ascontiguousarray(pad_to_multiple(work[r0:r1, c0:c1], m)[None, None], dtype=np.float32)
            (probs,) = self._session.run(list(PHASES_OUTPUT_NAMES), {PHASES_INPUT_NAME: x})
            out[:, k0:k1, l0:l1] = probs[0, :, k0 - r0 : k1 - r0, l0 - c0 : l1 - c0]
        return out
