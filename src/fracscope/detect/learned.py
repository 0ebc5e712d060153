"""The learned particle detector: a U-Net's foreground and distance maps, then a seeded watershed.

The network (`fracscope.models.detector_net.DetectorNet`, exported by
`fracscope.detect.export_detector`) works at one fixed *working* pixel size (default
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
(`DetectorMetadata`). The classifier's key ``fracscope`` is deliberately not used: a
detector file is then refused by `fracscope.runtime.OnnxBackend` and vice versa.

Big mosaics: give ``tile_px`` (full-resolution pixels) and images larger than that are
run through `fracscope.detect.detect_tiled`, or wrap the detector in a
`TiledDetector` in the config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.segmentation import relabel_sequential

from fracscope.crop import normalize_intensity
from fracscope.detect.base import Detector
from fracscope.detect.postprocess import PostprocessParams, grow_labels, labels_from_maps, mean_per_label
from fracscope.onnx_metadata import dataclass_from_json, read_props, write_prop
from fracscope.ort_options import session_options
from fracscope.types import SEMImage

DETECTOR_METADATA_KEY = "fracscope_detector"
DETECTOR_SCHEMA_VERSION = 1
DETECTOR_INPUT_NAME = "image"
DETECTOR_OUTPUT_NAMES: tuple[str, str] = ("foreground_prob", "distance")
DEFAULT_WORKING_PIXEL_SIZE_UM = 0.15
NORM_PERCENTILES: tuple[float, float] = (0.5, 99.5)
PAD_MULTIPLE = 32
# Pixel size assumed for images without one (typical SEM cross-section at ~50 nm/px).
FALLBACK_PIXEL_SIZE_UM = 0.05


class DetectorMetadataError(ValueError):
    """A model file carries no, or invalid, detector metadata."""


@dataclass(frozen=True)
class DetectorMetadata:
    """What a learned-detector model file says about itself.

    Attributes
    ----------
    working_pixel_size_um:
        Pixel size (µm) the network was trained at; inputs are resampled to it.
    normalisation:
        How the input was normalised, e.g. ``{"method": "percentile", "low_pct": 0.5,
        "high_pct": 99.5, "over": "whole image at working scale"}``.
    postprocess:
        `PostprocessParams` fields for `labels_from_maps` (areas in working pixels).
    pad_multiple:
        Input height and width must be multiples of this (the encoder's stride).
    encoder, in_channels:
        Architecture facts.
    input_name, output_names:
        Graph names.
    training_data, synth_version, metrics:
        Provenance and best validation metrics.
    precision, fracscope_version, export_date, schema_version:
        Filled at export.
    extra:
        Other plain-typed facts (augmentation, tile size, ...).
    """

    working_pixel_size_um: float = DEFAULT_WORKING_PIXEL_SIZE_UM
    normalisation: dict[str, Any] = field(
        default_factory=lambda: {
            "method": "percentile",
            "low_pct": NORM_PERCENTILES[0],
            "high_pct": NORM_PERCENTILES[1],
            "over": "whole image at working scale",
        }
    )
    postprocess: dict[str, Any] = field(default_factory=lambda: dataclasses.asdict(PostprocessParams()))
    pad_multiple: int = PAD_MULTIPLE
    encoder: str = ""
    in_channels: int = 1
    input_name: str = DETECTOR_INPUT_NAME
    output_names: tuple[str, ...] = DETECTOR_OUTPUT_NAMES
    training_data: str = ""
    synth_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    fracscope_version: str = ""
    export_date: str = ""
    schema_version: int = DETECTOR_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_names", tuple(str(n) for n in self.output_names))
        object.__setattr__(self, "metrics", {str(k): float(v) for k, v in self.metrics.items()})
        if not float(self.working_pixel_size_um) > 0:
            raise DetectorMetadataError(f"working_pixel_size_um must be > 0, got {self.working_pixel_size_um}")
        if int(self.pad_multiple) < 1:
            raise DetectorMetadataError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        if self.schema_version > DETECTOR_SCHEMA_VERSION:
            raise DetectorMetadataError(
                f"detector metadata schema {self.schema_version} is newer than this fracscope understands "
                f"({DETECTOR_SCHEMA_VERSION}); upgrade fracscope"
            )
        self.postprocess_params()  # unknown keys fail here, not at the first image

    def postprocess_params(self) -> PostprocessParams:
        """The stored post-processing settings as `PostprocessParams`."""
        known = {f.name for f in dataclasses.fields(PostprocessParams)}
        unknown = set(self.postprocess) - known
        if unknown:
            raise DetectorMetadataError(f"unknown post-processing settings {sorted(unknown)}")
        return PostprocessParams(**self.postprocess)

    def to_json(self) -> str:
        """Serialise to a JSON string (sorted keys, plain types)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DetectorMetadata:
        """Parse `to_json` output; unknown keys go to ``extra`` (forward compatibility)."""
        return dataclass_from_json(cls, text, DetectorMetadataError, "detector metadata")


def write_detector_metadata(path: str | Path, metadata: DetectorMetadata) -> None:
    """Store `metadata` (replacing any previous one) in the ONNX file at `path`, in place."""
    write_prop(path, DETECTOR_METADATA_KEY, metadata.to_json())


def read_detector_metadata(path: str | Path) -> DetectorMetadata:
    """Read `DetectorMetadata` from an ONNX file.

    Raises
    ------
    DetectorMetadataError
        When the file has no detector metadata (e.g. a particle classifier file).
    """
    props = read_props(path)
    if DETECTOR_METADATA_KEY not in props:
        raise DetectorMetadataError(
            f"{path} has no '{DETECTOR_METADATA_KEY}' metadata: not a fracscope detector file "
            "(export one with `python -m fracscope.detect.export_detector`)"
        )
    return DetectorMetadata.from_json(props[DETECTOR_METADATA_KEY])


# ------------------------------------------------------------------------------ scale helpers


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
        over the object's pixels at working scale.
    foreground_prob, distance: the network's maps at working scale (unpadded).
    scale: working pixels per image pixel.
    """

    labels: np.ndarray
    scores: np.ndarray
    foreground_prob: np.ndarray
    distance: np.ndarray
    scale: float


class LearnedDetector(Detector):
    """Particle detector from an exported U-Net (`fracscope.detect.export_detector`).

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
    fallback_pixel_size_um : float
        Pixel size assumed for images without one (a warning says so).
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
        fallback_pixel_size_um: float = FALLBACK_PIXEL_SIZE_UM,
        min_diameter_um: float | None = 1.5,
    ) -> None:
        from fracscope.assets import resolve_detector

        self.model_path = Path(resolve_detector(model_path))
        if not self.model_path.is_file():
            raise FileNotFoundError(f"detector model not found: {self.model_path}")
        self.metadata = read_detector_metadata(self.model_path)
        self._session = _onnx_session(self.model_path, device, threads)
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
        norm = self.metadata.normalisation
        self.percentiles = (float(norm.get("low_pct", NORM_PERCENTILES[0])),
                            float(norm.get("high_pct", NORM_PERCENTILES[1])))
        self.refine_boundary = bool(refine_boundary)
        self.tile_px = int(tile_px) if tile_px else None
        self.fallback_pixel_size_um = float(fallback_pixel_size_um)

    # -------------------------------------------------------------- public
    def detect(self, image: SEMImage) -> np.ndarray:
        """uint32 instance label map of `image` (0 = matrix, particles 1..N)."""
        shape = np.shape(image.pixels)
        if self.tile_px is not None and max(shape) > self.tile_px:
            from fracscope.detect.tiling import detect_tiled

            return detect_tiled(image, _Untiled(self), tile_px=self.tile_px)
        return self.detect_with_scores(image).labels

    def predict_maps(self, pixels: np.ndarray, pixel_size_um: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(foreground_prob, distance, scale) at working scale for raw `pixels`."""
        scale = float(pixel_size_um) / self.working_pixel_size_um
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
        px = image.pixel_size_um
        if px is None or not px > 0:
            warnings.warn(
                f"{image.source or 'image'} has no pixel size; the learned detector assumes "
                f"{self.fallback_pixel_size_um} µm/px", stacklevel=2,
            )
            px = self.fallback_pixel_size_um
        fg, dist, scale = self.predict_maps(pixels, px)
        small = labels_from_maps(fg, dist, params=self.params)
        scores = mean_per_label(fg, small)[1:].astype(np.float32)
        labels = self._to_full_resolution(small, fg, pixels.shape, scale)
        kept = np.unique(labels)
        kept = kept[kept > 0]
        labels = relabel_sequential(labels)[0].astype(np.uint32)
        return LearnedDetection(labels=labels, scores=scores[kept - 1], foreground_prob=fg, distance=dist, scale=scale)

    # -------------------------------------------------------------- helpers
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


def _onnx_session(path: Path, device: str, threads: int | None) -> Any:
    """An onnxruntime session for the detector graph, checked for the expected names."""
    import onnxruntime as ort

    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    providers: list[Any] = ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("device=cuda needs onnxruntime-gpu")
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index or 0)}))
    opts = session_options(threads)
    session = ort.InferenceSession(str(path), opts, providers=providers)
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != [DETECTOR_INPUT_NAME] or names_out != list(DETECTOR_OUTPUT_NAMES):
        raise DetectorMetadataError(
            f"{path}: expected input {DETECTOR_INPUT_NAME!r} and outputs {DETECTOR_OUTPUT_NAMES}, "
            f"found {names_in} -> {names_out}"
        )
    return session
