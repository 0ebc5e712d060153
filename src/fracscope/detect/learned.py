"""The learned particle detector: a U-Net's foreground and distance maps, then a seeded watershed.

The network (`fracscope.models.detector_net.DetectorNet`, exported by
`fracscope.export`) works at one fixed *working* pixel size (default
0.15 µm/px, where a 5-15 µm secondary particle is 33-100 px across and a whole SEM
page fits the network at once). `LearnedDetector.detect`:

1. resamples the page to the working pixel size (area averaging down, bilinear up;
   `to_working_scale`) and normalises it by percentiles over the whole resampled page
   (`normalise_image`), exactly as the training fields were;
2. pads it to a multiple of 32 (edge replication) and runs the ONNX graph fully
   convolutionally: outputs are per-pixel foreground probability and per-instance
   normalised distance to the boundary;
3. `fracscope.detect.labels_from_maps` (seeded watershed) turns the maps into
   instances, with the thresholds stored in the model file (like stardist, the file
   carries its own post-processing settings; constructor arguments override them);
4. labels are upsampled to the page (nearest) and the boundary redrawn at full
   resolution from the bilinearly upsampled foreground probability, so outlines are
   not 3-px staircases.

Everything the detector needs to use a model file correctly (working pixel size,
normalisation, padding multiple, post-processing settings, provenance) travels in the
ONNX ``metadata_props`` under the key ``fracscope_detector`` as JSON
(`fracscope.model_file.DetectorMetadata`). The classifier's key ``fracscope`` is deliberately not used: a
detector file is then refused by `fracscope.runtime.OnnxBackend` and vice versa.

Big mosaics: give ``tile_px`` (full-resolution pixels) and images larger than that are
run through `fracscope.detect.detect_tiled`, or wrap the detector in a
`TiledDetector` in the config.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.segmentation import relabel_sequential

from fracscope.crop import NORM_PERCENTILES, normalize_intensity
from fracscope.detect.base import Detector
from fracscope.detect.postprocess import grow_labels, labels_from_maps, object_scores
from fracscope.model_file import DETECTOR_INPUT_NAME, DETECTOR_OUTPUT_NAMES, DetectorMetadata, open_onnx_session
from fracscope.types import SEMImage

# Pixel size assumed for images without one when none can be estimated (typical SEM cross-section at ~50 nm/px).
FALLBACK_PIXEL_SIZE_UM = 0.05


# The most a model may enlarge an image to reach its working pixel size. Real SEM cross-sections of
# secondary particles lie between about 0.005 and 0.2 µm/px, i.e. at most 4x coarser than the phase
# model's 0.05 µm/px; beyond 20x (1 µm/px for the phase model, 3 µm/px for the detector) a 5-15 µm
# particle is a few pixels wide and the pixel size is almost surely wrong (nm typed as µm), while
# the enlarged image (400x the pixels) would exhaust memory.
MAX_ENLARGEMENT = 20.0


class ImplausiblePixelSize(ValueError):
    """A pixel size that would make a model resample the image to an absurd size: that image fails
    (a row of errors.csv), the run goes on."""


# ------------------------------------------------------------------------------ scale helpers


def check_enlargement(pixel_size_um: float, working_pixel_size_um: float, model: str) -> float:
    """The scale (working px per image px) a model resamples an image by; `ImplausiblePixelSize`
    (one line that names the likely cause) when it would enlarge the image over `MAX_ENLARGEMENT`.

    Every model that resamples whole images to a working pixel size (the learned detector, the
    phase model) calls this before it allocates the working image.
    """
    scale = float(pixel_size_um) / float(working_pixel_size_um)
    if scale > MAX_ENLARGEMENT:
        # nm typed as µm puts a 5-200 nm/px image at 5-200 "µm"/px
        cause = "nm typed as µm?" if pixel_size_um >= 1 else "a wrong pixel size?"
        raise ImplausiblePixelSize(
            f"pixel size {pixel_size_um:g} µm/px would enlarge the image {scale:.0f}x to the {model}'s "
            f"{working_pixel_size_um:g} µm/px; {cause}"
        )
    return scale


def working_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """Shape of an image of `shape` resampled by `scale` (output px per input px), >= 1 px."""
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def to_working_scale(pixels: np.ndarray, scale: float) -> np.ndarray:
    """Resample a grey image by `scale` (output px per input px) as float32.

    Area averaging when shrinking (no aliasing of noise and grain texture), bilinear
    when enlarging. Training fields and inference pages go through this same function.
    """
    import cv2

    arr = np.asarray(pixels, dtype=np.float32)
    h, w = working_shape(arr.shape, scale)
    if (h, w) == arr.shape:
        return arr.copy()
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(arr, (w, h), interpolation=interp)


def resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to `shape` (pixel centres sampled)."""
    labels = np.asarray(labels)
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def normalise_image(pixels: np.ndarray, percentiles: tuple[float, float] = NORM_PERCENTILES) -> np.ndarray:
    """Percentile scaling to [0, 1] over the whole (working-scale) image."""
    return normalize_intensity(pixels, float(percentiles[0]), float(percentiles[1]))


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Pad bottom and right by edge replication so both sides are multiples of `multiple`."""
    h, w = image.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image
    return np.pad(image, ((0, ph), (0, pw)), mode="edge")


# ------------------------------------------------------------------------------ the detector


@dataclass
class LearnedDetection:
    """A learned detection: labels with a confidence per instance.

    labels: uint32 (H, W) at the image's resolution, 0 = matrix, objects 1..N.
    scores: float32 (N,), score of label k at index k - 1: mean foreground probability
        over the object's foreground pixels at working scale (`postprocess.object_scores`).
    foreground_prob, distance: the network's maps at working scale (unpadded).
    scale: working pixels per image pixel.
    """

    labels: np.ndarray
    scores: np.ndarray
    foreground_prob: np.ndarray
    distance: np.ndarray
    scale: float


class LearnedDetector(Detector):
    """Particle detector from an exported U-Net (`fracscope.export`).

    Parameters
    ----------
    model_path : str or Path, optional
        The detector ``.onnx`` (with ``fracscope_detector`` metadata); None or "default":
        the shipped ``models/fracscope_detector.onnx``.
    working_pixel_size_um : float, optional
        Override the working pixel size stored in the model (only for experiments: the
        network saw particles at the stored one).
    device : str
        'cpu', 'cuda' or 'cuda:N' (CUDA needs onnxruntime-gpu).
    foreground_threshold, seed_threshold, min_score : float, optional
        Override the stored post-processing thresholds (`PostprocessParams`).
    postprocess : mapping, optional
        Override any other `PostprocessParams` field (areas in working pixels).
    refine_boundary : bool
        Redraw outlines at full resolution from the upsampled foreground probability.
    tile_px : int, optional
        Images with a side larger than this (full-resolution px) are detected tile by
        tile (`detect_tiled`, overlap from the pixel size).
    threads : int, optional
        onnxruntime intra-op threads (None = its default).
    fallback_pixel_size_um : float, optional
        None (default): images without a pixel size get one estimated from the image
        (`fracscope.detect.scale.estimate_pixel_size_um`). A number: assume it for them (a
        warning says so), as before estimation existed; it is also assumed when the estimate
        finds nothing.
    min_diameter_um : float, optional
        Objects with a smaller area-equivalent diameter are dropped (the classical
        detector's rule, same default). The network fires on sub-µm bright specks of the
        matrix; they are not secondary particles. None: only the model's own
        ``min_area_px``.

    Examples
    --------
    >>> det = LearnedDetector("detector.onnx")                      # doctest: +SKIP
    >>> labels = det.detect(image)                                  # doctest: +SKIP
    """

    name = "learned"

    def __init__(
        self,
        model_path: str | Path | None = None,
        working_pixel_size_um: float | None = None,
        device: str = "cpu",
        foreground_threshold: float | None = None,
        seed_threshold: float | None = None,
        min_score: float | None = None,
        postprocess: Mapping[str, Any] | None = None,
        refine_boundary: bool = True,
        tile_px: int | None = None,
        threads: int | None = None,
        fallback_pixel_size_um: float | None = None,
        min_diameter_um: float | None = 1.5,
    ) -> None:
        from fracscope.assets import resolve_detector

        self.model_path = Path(resolve_detector(model_path))
        if not self.model_path.is_file():
            raise FileNotFoundError(f"detector model not found: {self.model_path}")
        self._session, self.metadata = open_onnx_session(self.model_path, DetectorMetadata, device, threads)
        self.device = device
        self.working_pixel_size_um = float(working_pixel_size_um or self.metadata.working_pixel_size_um)
        overrides = dict(postprocess or {})
        if foreground_threshold is not None:
            overrides["foreground_threshold"] = float(foreground_threshold)
        if seed_threshold is not None:
            overrides["seed_threshold"] = float(seed_threshold)
        if min_score is not None:
            overrides["min_score"] = float(min_score)
        params = dataclasses.replace(self.metadata.postprocess_params(), **overrides)
        self.min_diameter_um = float(min_diameter_um) if min_diameter_um else None
        if min_diameter_um:
            min_area = math.ceil(math.pi * (float(min_diameter_um) / self.working_pixel_size_um / 2) ** 2)
            params = dataclasses.replace(params, min_area_px=max(params.min_area_px, min_area))
        self.params = params
        self.percentiles = self.metadata.percentiles
        self.refine_boundary = bool(refine_boundary)
        self.tile_px = int(tile_px) if tile_px else None
        self.fallback_pixel_size_um = float(fallback_pixel_size_um) if fallback_pixel_size_um else None

    # -------------------------------------------------------------- public
    def detect(self, image: SEMImage) -> np.ndarray:
        """uint32 instance label map of `image` (0 = matrix, particles 1..N)."""
        shape = np.shape(image.pixels)
        if self.tile_px is not None and max(shape) > self.tile_px:
            from fracscope.detect.tiling import detect_tiled

            # One pixel size for every tile: estimated once on the whole page.
            if image.working_pixel_size_um is None:
                image = dataclasses.replace(image, estimated_pixel_size_um=self._pixel_size_for(image))
            return detect_tiled(image, _Untiled(self), tile_px=self.tile_px)
        return self.detect_with_scores(image).labels

    def estimate_pixel_size_um(self, pixels: np.ndarray) -> float | None:
        """The pixel size estimated from `pixels` (`fracscope.detect.scale`); None when the detector
        is set to assume `fallback_pixel_size_um` instead, or finds nothing to estimate from."""
        if self.fallback_pixel_size_um is not None:
            return None
        from fracscope.detect.scale import estimate_pixel_size_um

        estimate = estimate_pixel_size_um(pixels, self)
        return None if estimate is None else estimate.pixel_size_um

    def detect_scored(self, image: SEMImage) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels and each object's score (`detect_with_scores`); no scores when tiled."""
        shape = np.shape(image.pixels)
        if self.tile_px is not None and max(shape) > self.tile_px:
            return self.detect(image), None
        found = self.detect_with_scores(image)
        return found.labels, found.scores

    def predict_maps(self, pixels: np.ndarray, pixel_size_um: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(foreground_prob, distance, scale) at working scale for raw `pixels`."""
        scale = check_enlargement(pixel_size_um, self.working_pixel_size_um, "detector")
        work = normalise_image(to_working_scale(pixels, scale), self.percentiles)
        h, w = work.shape
        x = pad_to_multiple(work, int(self.metadata.pad_multiple))[None, None].astype(np.float32)
        fg, dist = self._session.run(list(DETECTOR_OUTPUT_NAMES), {DETECTOR_INPUT_NAME: x})
        return fg[0, 0, :h, :w], dist[0, 0, :h, :w], scale

    def detect_with_scores(self, image: SEMImage) -> LearnedDetection:
        """Labels at full resolution plus a score per instance (for AP) and the raw maps."""
        pixels = np.asarray(image.pixels)
        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
        px = image.working_pixel_size_um
        if px is None or not px > 0:
            px = self._pixel_size_for(image)
        fg, dist, scale = self.predict_maps(pixels, px)
        small = labels_from_maps(fg, dist, params=self.params)
        scores = object_scores(fg, small, self.params.foreground_threshold)[1:].astype(np.float32)
        labels = self._to_full_resolution(small, fg, pixels.shape, scale)
        kept = np.unique(labels)
        kept = kept[kept > 0]
        labels = relabel_sequential(labels)[0].astype(np.uint32)
        return LearnedDetection(labels=labels, scores=scores[kept - 1], foreground_prob=fg, distance=dist, scale=scale)

    # -------------------------------------------------------------- helpers
    def _pixel_size_for(self, image: SEMImage) -> float:
        """For an image without a pixel size: the estimate, else the fallback (warned)."""
        estimate = self.estimate_pixel_size_um(np.asarray(image.pixels))
        if estimate is not None:
            return estimate
        assumed = self.fallback_pixel_size_um or FALLBACK_PIXEL_SIZE_UM
        why = "" if self.fallback_pixel_size_um is not None else " and none could be estimated from it"
        warnings.warn(f"{image.source or 'image'} has no pixel size{why}; the learned detector assumes "
                      f"{assumed} µm/px", stacklevel=3)
        return assumed

    def _to_full_resolution(
        self, small: np.ndarray, fg: np.ndarray, shape: tuple[int, int], scale: float
    ) -> np.ndarray:
        """Nearest upsample; where refining, the outline follows the upsampled foreground."""
        labels = resize_nearest(small, shape).astype(np.uint32)
        if not self.refine_boundary or scale >= 1 or not labels.any():
            return labels
        import cv2

        fg_full = cv2.resize(fg.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        mask = fg_full > self.params.foreground_threshold
        # Pixels the coarse labels missed inside the fine mask go to the nearest object
        # (within one coarse pixel); coarse-label pixels outside the fine mask are dropped.
        grown = grow_labels(np.where(mask, labels, 0), distance=math.ceil(1.0 / scale))
        grown[~mask] = 0
        return grown.astype(np.uint32)


class _Untiled(Detector):
    """The wrapped detector without its own tiling (what `detect_tiled` calls per tile)."""

    name = "learned"

    def __init__(self, inner: LearnedDetector) -> None:
        self.inner = inner

    def detect(self, image: SEMImage) -> np.ndarray:
        return self.inner.detect_with_scores(image).labels
