"""The model-file contract: what every model fracscope ships says about itself, and how it is opened.

A model file is an ONNX graph with JSON metadata in its ``metadata_props``, one key per kind
of model, so that a file of one kind is refused where another is expected:

============  ==================  ============================  ===============================
kind          metadata class      metadata key                  graph input → outputs
============  ==================  ============================  ===============================
classifier    `ModelMetadata`     ``fracscope``                 ``crops`` → ``class_probs``,
                                                                ``phase_probs``
detector      `DetectorMetadata`  ``fracscope_detector``        ``image`` → ``foreground_prob``,
                                                                ``distance``
phases        `PhaseMetadata`     ``fracscope_phases``          ``image`` → ``phase_probs``
sections      `SectionMetadata`   ``fracscope_sections``        ``sections`` → ``class_probs``
============  ==================  ============================  ===============================

(``sections``: the section net of issue 18, trainable and exportable; inference does not use it yet.)

A coming model kind adds a metadata dataclass with ``KIND``, ``METADATA_KEY``, ``INPUT_NAME``
and ``OUTPUT_NAMES`` class attributes and a ``from_hparams``; `read_metadata`,
`write_metadata`, `open_onnx_session` and `checkpoint_kind` then serve it unchanged.

This module also holds the file hash (`sha256_of`), the one error for a bad model file
(`MetadataError`), the one checkpoint loader (`load_checkpoint_dict`, ``weights_only``) and
the one onnxruntime session opener (`open_onnx_session`, with the CUDA checks). It imports
neither torch nor onnxruntime at module level: both are imported where they are needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import fracscope
from fracscope.crop import NORM_PERCENTILES, CropSpec
from fracscope.detect.postprocess import PostprocessParams
from fracscope.settings import SettingsError, settings_from_config
from fracscope.types import CLASS_NAMES, PHASE_NAMES, SECTION_CHANNELS

PRECISIONS: tuple[str, ...] = ("fp32", "int8")
DEVICE_KINDS: tuple[str, ...] = ("cpu", "cuda")

# The classifier (particle network).
METADATA_KEY = "fracscope"
METADATA_SCHEMA_VERSION = 1
INPUT_NAME = "crops"
OUTPUT_NAMES: tuple[str, str] = ("class_probs", "phase_probs")

# The learned detector.
DETECTOR_METADATA_KEY = "fracscope_detector"
DETECTOR_SCHEMA_VERSION = 1
DETECTOR_INPUT_NAME = "image"
DETECTOR_OUTPUT_NAMES: tuple[str, str] = ("foreground_prob", "distance")
DEFAULT_WORKING_PIXEL_SIZE_UM = 0.15
PAD_MULTIPLE = 32

# The dense (native-resolution) phase model.
PHASES_METADATA_KEY = "fracscope_phases"
PHASES_SCHEMA_VERSION = 1
PHASES_INPUT_NAME = "image"
PHASES_OUTPUT_NAMES: tuple[str] = ("phase_probs",)
DEFAULT_PHASE_PIXEL_SIZE_UM = 0.05
#: Inference tile and overlap at working scale (px, multiples of PAD_MULTIPLE); see `fracscope.phase_map`.
DEFAULT_PHASE_TILE_PX = 512
DEFAULT_PHASE_OVERLAP_PX = 64
#: ``config["task"]`` of a `PhaseModule` checkpoint (written by `PhaseDataModule.describe`).
PHASE_MAP_TASK = "phase_map"

# The section net (a class per particle section from its window of the native phase map).
SECTIONS_METADATA_KEY = "fracscope_sections"
SECTIONS_SCHEMA_VERSION = 1
SECTIONS_INPUT_NAME = "sections"
SECTIONS_OUTPUT_NAMES: tuple[str] = ("class_probs",)
#: ``config["task"]`` of a `SectionModule` checkpoint (written by `SectionDataModule.describe`).
SECTION_TASK = "section_class"

M = TypeVar("M")


class MetadataError(ValueError):
    """A model file (or checkpoint) carries no, or invalid, fracscope metadata."""


class BackendUnavailableError(RuntimeError):
    """The requested backend/device cannot run here (missing package, provider or GPU)."""


#: How to add the training stack (pyproject's ``train`` extra) to a core, inference-only install.
TRAIN_EXTRA_INSTALL = "pip install -e '.[train]'"


class TrainingStackMissingError(BackendUnavailableError, ValueError):
    """torch/torchvision are not installed (a core install); a ValueError, so a command line says it
    in one line with exit status 2 (`fracscope.cli.usage_errors`)."""


def require_torch(what: str) -> None:
    """Raise `TrainingStackMissingError` naming `what` and the install command when torch or
    torchvision cannot be imported; the core install has neither."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as err:
        raise TrainingStackMissingError(
            f"{what} needs torch, which this install lacks (inference-only core); "
            f"add the training stack: {TRAIN_EXTRA_INSTALL}"
        ) from err


# --------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelMetadata:
    """What a classifier model file must say about itself for inference to use it correctly.

    Attributes
    ----------
    class_names, phase_names:
        Output channel names, in index order.
    crop_size, margin, normalisation:
        The crop spec the network was trained with (`crop_spec` rebuilds it): crop edge
        length S (pixels), margin around the particle box (fraction of its longer side),
        and the image channel's normalisation, e.g. ``{"method": "percentile",
        "low_pct": 0.5, "high_pct": 99.5}``. Inference crops with exactly this spec.
    in_channels:
        Input channels (2: normalised image, own mask).
    encoder:
        Encoder (backbone) name.
    pixel_size_range_um:
        (min, max) pixel size of the source SEM images seen in training, µm; None when unknown.
    crop_pixel_size_range_um:
        (min, max) pixel size of the crops the network saw (after resizing), µm; None when unknown.
    pore_polarities:
        Pore appearances seen in training (e.g. ``("dark",)`` or ``("dark", "bright")``).
    synth_version:
        Version of the synthetic generator used for training data, or None.
    training_data:
        Free-text description of the training data.
    metrics:
        Best validation metrics (name → value).
    precision:
        ``"fp32"`` or ``"int8"``.
    fracscope_version, export_date:
        Provenance, filled at export.
    pore_weight:
        Factor on the pore probability before the argmax on the source pixel grid, after the
        crop's probabilities are pasted back (bilinear). That resampling shrinks pores a few
        crop pixels across, so a model's porosity there runs low; the factor is chosen on
        tuning fields (``bench/pipeline_accuracy.py --tuning-seed``), never the held-out
        set. 1.0 = plain argmax.
    extra:
        Any other plain-typed facts (e.g. calibration description for int8).
    """

    KIND: ClassVar[str] = "classifier"
    METADATA_KEY: ClassVar[str] = METADATA_KEY
    INPUT_NAME: ClassVar[str] = INPUT_NAME
    OUTPUT_NAMES: ClassVar[tuple[str, ...]] = OUTPUT_NAMES

    class_names: tuple[str, ...] = CLASS_NAMES
    phase_names: tuple[str, ...] = PHASE_NAMES
    crop_size: int = CropSpec.size
    in_channels: int = 2
    margin: float = CropSpec.margin
    normalisation: dict[str, Any] = field(default_factory=lambda: CropSpec().to_fields()["normalisation"])
    encoder: str = ""
    pixel_size_range_um: tuple[float, float] | None = None
    crop_pixel_size_range_um: tuple[float, float] | None = None
    pore_polarities: tuple[str, ...] = ()
    synth_version: str | None = None
    training_data: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    fracscope_version: str = fracscope.__version__
    export_date: str = ""
    schema_version: int = METADATA_SCHEMA_VERSION
    pore_weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise list-like fields to tuples so JSON round trips compare equal.
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "phase_names", tuple(str(p) for p in self.phase_names))
        object.__setattr__(self, "pore_polarities", tuple(str(p) for p in self.pore_polarities))
        for name in ("pixel_size_range_um", "crop_pixel_size_range_um"):
            value = getattr(self, name)
            if value is not None:
                lo, hi = (float(v) for v in value)
                object.__setattr__(self, name, (lo, hi))
        object.__setattr__(self, "metrics", {str(k): float(v) for k, v in self.metrics.items()})
        self.validate()

    def validate(self) -> None:
        """Raise :class:`MetadataError` when a field is inconsistent."""
        if len(self.class_names) < 2:
            raise MetadataError(f"need at least 2 class names, got {self.class_names!r}")
        if len(self.phase_names) < 2:
            raise MetadataError(f"need at least 2 phase names, got {self.phase_names!r}")
        if int(self.in_channels) <= 0:
            raise MetadataError(f"in_channels must be positive, got {self.in_channels}")
        self.crop_spec  # noqa: B018 - crop size, margin and normalisation fail here, not at the first image
        if not float(self.pore_weight) > 0:
            raise MetadataError(f"pore_weight must be positive, got {self.pore_weight}")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("pixel_size_range_um", "crop_pixel_size_range_um"):
            value = getattr(self, name)
            if value is not None and not 0 < value[0] <= value[1]:
                raise MetadataError(f"{name} must satisfy 0 < min <= max, got {value}")
        _check_schema(self.schema_version, METADATA_SCHEMA_VERSION, "metadata")

    @property
    def crop_spec(self) -> CropSpec:
        """The crop spec stored in the file (crop_size, margin, normalisation): inference uses it."""
        try:
            return CropSpec.from_fields(self.crop_size, self.margin, self.normalisation)
        except ValueError as err:
            raise MetadataError(f"invalid crop spec in model metadata: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed dict (tuples become lists), e.g. for a run's summary.json."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """Serialise to a JSON string (sorted keys, plain types)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse :meth:`to_json` output; unknown keys go to ``extra`` (forward compatibility).

        Raises
        ------
        MetadataError
            On malformed JSON or invalid fields.
        """
        return dataclass_from_json(cls, text, "fracscope metadata")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> ModelMetadata:
        """Build from a `ParticleModule` checkpoint's ``hyper_parameters``.

        They hold ``{"net": NetConfig fields, "config": facts for export, ...}``: the network's
        ``encoder`` and ``in_channels`` come from ``net``; from ``config`` (the data module's
        ``describe()`` plus ``best_metrics``) the crop spec fields (`CropSpec.to_fields`), the
        names and the training facts, each under the one name the training code writes. Missing
        fields keep their defaults; other plain ``config`` entries (augmentation, split seed, ...)
        are kept in ``extra`` for provenance.
        """
        net = dict(hparams.get("net") or {})
        config = dict(hparams.get("config") or {})
        read = ("crop_size", "margin", "normalisation", "in_channels", "class_names", "phase_names",
                "pixel_size_range_um", "crop_pixel_size_range_um", "pore_polarities", "synth_version",
                "training_data", "best_metrics")
        kwargs: dict[str, Any] = {k: config[k] for k in read[:-1] if config.get(k) is not None}
        if "encoder" in net:
            kwargs["encoder"] = str(net["encoder"])
        if "in_channels" in net:
            kwargs["in_channels"] = int(net["in_channels"])
        kwargs["metrics"] = _numbers(config.get("best_metrics"))
        kwargs["extra"] = {k: v for k, v in config.items() if k not in read and _is_plain(v)}
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# The learned detector
# --------------------------------------------------------------------------------------------


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

    KIND: ClassVar[str] = "detector"
    METADATA_KEY: ClassVar[str] = DETECTOR_METADATA_KEY
    INPUT_NAME: ClassVar[str] = DETECTOR_INPUT_NAME
    OUTPUT_NAMES: ClassVar[tuple[str, ...]] = DETECTOR_OUTPUT_NAMES

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
            raise MetadataError(f"working_pixel_size_um must be > 0, got {self.working_pixel_size_um}")
        if int(self.pad_multiple) < 1:
            raise MetadataError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check_schema(self.schema_version, DETECTOR_SCHEMA_VERSION, "detector metadata")
        self.postprocess_params()  # unknown keys fail here, not at the first image

    @property
    def percentiles(self) -> tuple[float, float]:
        """(low, high) normalisation percentiles stored in the file."""
        norm = self.normalisation
        return (float(norm.get("low_pct", NORM_PERCENTILES[0])), float(norm.get("high_pct", NORM_PERCENTILES[1])))

    def postprocess_params(self) -> PostprocessParams:
        """The stored post-processing settings as `PostprocessParams`."""
        try:
            return settings_from_config(PostprocessParams, self.postprocess, "the detector file's postprocess settings")
        except SettingsError as err:  # a model file that does not fit this fracscope
            raise MetadataError(str(err)) from None

    def to_json(self) -> str:
        """Serialise to a JSON string (sorted keys, plain types)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DetectorMetadata:
        """Parse `to_json` output; unknown keys go to ``extra`` (forward compatibility)."""
        return dataclass_from_json(cls, text, "detector metadata")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> DetectorMetadata:
        """Build from a `DetectorModule` checkpoint's ``hyper_parameters`` (``net``, ``config``,
        ``postprocess``); other plain ``config`` entries are kept in ``extra``."""
        net = dict(hparams.get("net") or {})
        cfg = dict(hparams.get("config") or {})
        defaults = cls()
        used = {"working_pixel_size_um", "normalisation", "training_data", "synth_version", "best_metrics",
                "encoder", "in_channels"}
        return cls(
            working_pixel_size_um=float(cfg.get("working_pixel_size_um", defaults.working_pixel_size_um)),
            normalisation=dict(cfg.get("normalisation") or defaults.normalisation),
            postprocess=dict(hparams.get("postprocess") or defaults.postprocess),
            encoder=str(net.get("encoder", "")),
            in_channels=int(net.get("in_channels", 1)),
            training_data=str(cfg.get("training_data", "")),
            synth_version=cfg.get("synth_version"),
            metrics=_numbers(cfg.get("best_metrics")),
            extra={k: v for k, v in cfg.items() if k not in used},
        )


# --------------------------------------------------------------------------------------------
# The dense phase model
# --------------------------------------------------------------------------------------------


def _default_percentile_normalisation() -> dict[str, Any]:
    return {"method": "percentile", "low_pct": NORM_PERCENTILES[0], "high_pct": NORM_PERCENTILES[1],
            "over": "whole image at working scale"}


@dataclass(frozen=True)
class PhaseMetadata:
    """What a dense phase-model file (`fracscope.phase_map.PhaseMapModel`) says about itself.

    Attributes
    ----------
    working_pixel_size_um:
        Pixel size (µm) the network was trained at; images are resampled to it.
    normalisation:
        ``{"method": "percentile", "low_pct", "high_pct", "over": ...}``: percentile scaling
        over the whole image at working scale, as in training.
    pad_multiple:
        Input height and width must be multiples of this (the encoder's stride).
    tile_px, overlap_px:
        Default inference tile side and smallest overlap between tiles, working px
        (multiples of `pad_multiple`); `PhaseMapModel` arguments override them.
    encoder, in_channels:
        Architecture facts.
    phase_names:
        Output channel names, in index order.
    pixel_size_range_um:
        (min, max) pixel size of the source images seen in training, µm; None when unknown.
    pore_polarities:
        Pore appearances seen in training (``("dark",)``: no Pt-filled pores yet).
    class_rule:
        Parameters of the per-particle damage-class decision taken from this model's phase map
        (`fracscope.classify.class_rule_from_dict`; empty = the default `CrackRule`).
    pore_decision_weight:
        Factor on the pore probability before each pixel's phase is chosen (1 = plain argmax,
        the shipped file's: one factor cannot correct a pore recall that depends on pore size,
        docs/BENCHMARKS.md); re-set with ``fracscope-export FILE.onnx --pore-decision-weight W``.
    training_data, synth_version, metrics:
        Provenance and best validation metrics.
    precision, fracscope_version, export_date, schema_version:
        Filled at export.
    extra:
        Other plain-typed facts (training tile size, phase fractions, augmentation, ...).
    """

    KIND: ClassVar[str] = "phases"
    METADATA_KEY: ClassVar[str] = PHASES_METADATA_KEY
    INPUT_NAME: ClassVar[str] = PHASES_INPUT_NAME
    OUTPUT_NAMES: ClassVar[tuple[str, ...]] = PHASES_OUTPUT_NAMES

    working_pixel_size_um: float = DEFAULT_PHASE_PIXEL_SIZE_UM
    normalisation: dict[str, Any] = field(default_factory=_default_percentile_normalisation)
    pad_multiple: int = PAD_MULTIPLE
    tile_px: int = DEFAULT_PHASE_TILE_PX
    overlap_px: int = DEFAULT_PHASE_OVERLAP_PX
    encoder: str = ""
    in_channels: int = 1
    phase_names: tuple[str, ...] = PHASE_NAMES
    pixel_size_range_um: tuple[float, float] | None = None
    pore_polarities: tuple[str, ...] = ("dark",)
    class_rule: dict[str, Any] = field(default_factory=dict)
    pore_decision_weight: float = 1.0
    training_data: str = ""
    synth_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    fracscope_version: str = ""
    export_date: str = ""
    schema_version: int = PHASES_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase_names", tuple(str(p) for p in self.phase_names))
        object.__setattr__(self, "pore_polarities", tuple(str(p) for p in self.pore_polarities))
        object.__setattr__(self, "metrics", {str(k): float(v) for k, v in self.metrics.items()})
        object.__setattr__(self, "pixel_size_range_um", _pixel_size_range(self.pixel_size_range_um))
        if not float(self.working_pixel_size_um) > 0:
            raise MetadataError(f"working_pixel_size_um must be > 0, got {self.working_pixel_size_um}")
        multiple = int(self.pad_multiple)
        if multiple < 1:
            raise MetadataError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        if int(self.tile_px) < multiple or int(self.tile_px) % multiple or int(self.overlap_px) % multiple:
            raise MetadataError(f"tile_px ({self.tile_px}) and overlap_px ({self.overlap_px}) must be multiples "
                                f"of pad_multiple ({multiple}), tile_px at least one")
        if not 0 <= int(self.overlap_px) < int(self.tile_px):
            raise MetadataError(f"need 0 <= overlap_px < tile_px, got {self.overlap_px}, {self.tile_px}")
        if not float(self.pore_decision_weight) > 0:
            raise MetadataError(f"pore_decision_weight must be > 0, got {self.pore_decision_weight}")
        if len(self.phase_names) < 2 or "crack" not in self.phase_names:
            raise MetadataError(f"phase_names needs at least 2 names including 'crack', got {self.phase_names!r}")
        if self.normalisation.get("method", "percentile") != "percentile":
            raise MetadataError(f"unknown normalisation method {self.normalisation.get('method')!r}; "
                                "expected 'percentile'")
        lo_pct, hi_pct = self.percentiles
        if not 0.0 <= lo_pct < hi_pct <= 100.0:
            raise MetadataError(f"need 0 <= low_pct < high_pct <= 100, got {lo_pct}, {hi_pct}")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check_schema(self.schema_version, PHASES_SCHEMA_VERSION, "phase-model metadata")

    @property
    def percentiles(self) -> tuple[float, float]:
        """(low, high) normalisation percentiles stored in the file."""
        norm = self.normalisation
        return (float(norm.get("low_pct", NORM_PERCENTILES[0])), float(norm.get("high_pct", NORM_PERCENTILES[1])))

    def to_json(self) -> str:
        """Serialise to a JSON string (sorted keys, plain types)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PhaseMetadata:
        """Parse `to_json` output; unknown keys go to ``extra`` (forward compatibility)."""
        return dataclass_from_json(cls, text, "phase-model metadata")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> PhaseMetadata:
        """Build from a `PhaseModule` checkpoint's ``hyper_parameters`` (``net``, ``loss``, ``config``).

        ``config`` is `PhaseDataModule.describe()` plus ``best_metrics``. Its ``tile_px`` is the
        *training* tile: it is kept as ``extra["training_tile_px"]``, not taken as the inference
        tile. Other plain ``config`` entries and the loss settings are kept in ``extra``.
        """
        net = dict(hparams.get("net") or {})
        cfg = dict(hparams.get("config") or {})
        read = ("working_pixel_size_um", "normalisation", "pixel_size_range_um", "phase_names", "training_data",
                "synth_version", "pore_polarities")  # checkpoints before pore_polarities: dark pores only
        kwargs: dict[str, Any] = {k: cfg[k] for k in read if cfg.get(k) is not None}
        kwargs["encoder"] = str(net.get("encoder", ""))
        kwargs["in_channels"] = int(net.get("in_channels", cfg.get("in_channels", 1)))
        kwargs["metrics"] = _numbers(cfg.get("best_metrics"))
        n_phases = int(net.get("num_phases", len(kwargs.get("phase_names", PHASE_NAMES))))
        if n_phases != len(kwargs.get("phase_names", PHASE_NAMES)):
            raise MetadataError(f"the network has {n_phases} phase outputs but the names are "
                                f"{kwargs.get('phase_names', PHASE_NAMES)}")
        used = {*read, "in_channels", "best_metrics", "tile_px"}
        extra = {k: v for k, v in cfg.items() if k not in used and _is_plain(v)}
        if "tile_px" in cfg:
            extra["training_tile_px"] = cfg["tile_px"]
        if _is_plain(hparams.get("loss")) and hparams.get("loss"):
            extra["loss"] = hparams["loss"]
        kwargs["extra"] = extra
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# The section net
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionMetadata:
    """What a section-net file says about itself (`fracscope.sections`, `fracscope.models.section_net`).

    Attributes
    ----------
    class_names:
        Output class names, in index order.
    size_px, margin, channels:
        The section window (`fracscope.sections.SectionWindow.from_metadata` rebuilds it): output
        side (px), window side / the mask box's longer side, input channel names in order.
    width:
        The network's first-stage channel count (architecture fact).
    min_eq_diameter_um:
        Smallest section (equivalent diameter, µm) seen in training.
    pixel_size_range_um:
        (min, max) pixel size of the source images seen in training, µm; None when unknown.
    phase_model_sha256:
        SHA-256 of the graph (`graph_sha256`: operators and weights, not the metadata, which holds the class
        rule) of the phase model whose phases the training windows carry: the net learned that model's way
        of drawing pores and cracks ("" = unknown).
    training_data, synth_version, metrics:
        Provenance and best validation metrics (``val/macro_f1``, ...).
    precision, fracscope_version, export_date, schema_version:
        Filled at export.
    extra:
        Other plain-typed facts (class counts, augmentation, split seed, ...).
    """

    KIND: ClassVar[str] = "sections"
    METADATA_KEY: ClassVar[str] = SECTIONS_METADATA_KEY
    INPUT_NAME: ClassVar[str] = SECTIONS_INPUT_NAME
    OUTPUT_NAMES: ClassVar[tuple[str, ...]] = SECTIONS_OUTPUT_NAMES

    class_names: tuple[str, ...] = CLASS_NAMES
    size_px: int = 64
    margin: float = 1.15
    channels: tuple[str, ...] = SECTION_CHANNELS
    width: int = 24
    min_eq_diameter_um: float = 3.0
    pixel_size_range_um: tuple[float, float] | None = None
    phase_model_sha256: str = ""
    training_data: str = ""
    synth_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    fracscope_version: str = ""
    export_date: str = ""
    schema_version: int = SECTIONS_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        object.__setattr__(self, "metrics", {str(k): float(v) for k, v in self.metrics.items()})
        object.__setattr__(self, "pixel_size_range_um", _pixel_size_range(self.pixel_size_range_um))
        if len(self.class_names) < 2:
            raise MetadataError(f"need at least 2 class names, got {self.class_names!r}")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check_schema(self.schema_version, SECTIONS_SCHEMA_VERSION, "section-net metadata")
        # The window's own checks (`fracscope.sections.SectionWindow`, which imports this module): a bad
        # window fails here, not at the first image.
        if int(self.size_px) < 8 or not float(self.margin) >= 1.0 or self.channels != SECTION_CHANNELS:
            raise MetadataError(f"invalid section window in model metadata: size_px {self.size_px} (>= 8), margin "
                                f"{self.margin} (>= 1), channels {self.channels} (must be {SECTION_CHANNELS})")

    def to_json(self) -> str:
        """Serialise to a JSON string (sorted keys, plain types)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SectionMetadata:
        """Parse `to_json` output; unknown keys go to ``extra`` (forward compatibility)."""
        return dataclass_from_json(cls, text, "section-net metadata")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> SectionMetadata:
        """Build from a `SectionModule` checkpoint's ``hyper_parameters`` (``net``, ``config``, ``class_weights``).

        ``config`` is `SectionDataModule.describe()` plus ``best_metrics``; other plain ``config``
        entries and the class weights are kept in ``extra``.
        """
        net = dict(hparams.get("net") or {})
        cfg = dict(hparams.get("config") or {})
        read = ("class_names", "size_px", "margin", "channels", "min_eq_diameter_um", "pixel_size_range_um",
                "phase_model_sha256", "training_data", "synth_version")
        kwargs: dict[str, Any] = {k: cfg[k] for k in read if cfg.get(k) is not None}
        kwargs["width"] = int(net.get("width", cls.width))
        kwargs["metrics"] = _numbers(cfg.get("best_metrics"))
        names = kwargs.get("class_names", CLASS_NAMES)
        if int(net.get("num_classes", len(names))) != len(names):
            raise MetadataError(f"the network has {net.get('num_classes')} class outputs but the names are {names}")
        if int(net.get("in_channels", len(kwargs.get("channels", cls.channels)))) != len(kwargs.get("channels",
                                                                                                      cls.channels)):
            raise MetadataError(f"the network takes {net.get('in_channels')} channels but the window has "
                                f"{kwargs.get('channels', cls.channels)}")
        used = {*read, "in_channels", "best_metrics", "task"}
        extra = {k: v for k, v in cfg.items() if k not in used and _is_plain(v)}
        if _is_plain(hparams.get("class_weights")) and hparams.get("class_weights"):
            extra["class_weights"] = hparams["class_weights"]
        kwargs["extra"] = extra
        return cls(**kwargs)


METADATA_CLASSES: tuple[type, ...] = (ModelMetadata, DetectorMetadata, PhaseMetadata, SectionMetadata)


def checkpoint_kind(hparams: Mapping[str, Any]) -> type:
    """The metadata class of a checkpoint's model.

    A `PhaseModule`'s ``config["task"]`` is ``"phase_map"``, a `SectionModule`'s ``"section_class"``;
    only a `DetectorModule` stores ``postprocess``; anything else is a classifier.
    """
    config = hparams.get("config")
    if isinstance(config, Mapping) and config.get("task") == PHASE_MAP_TASK:
        return PhaseMetadata
    if isinstance(config, Mapping) and config.get("task") == SECTION_TASK:
        return SectionMetadata
    return DetectorMetadata if "postprocess" in hparams else ModelMetadata


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_schema(version: int, understood: int, what: str) -> None:
    if version > understood:
        raise MetadataError(
            f"{what} schema {version} is newer than this fracscope understands ({understood}); upgrade fracscope"
        )


def _is_plain(v: Any) -> bool:
    """Whether ``v`` survives a JSON round trip (plain types only)."""
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def _numbers(metrics: Any) -> dict[str, float]:
    """The numeric entries of a metrics mapping (None → {})."""
    return {str(k): float(v) for k, v in dict(metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def dataclass_from_json(cls: type[M], text: str, what: str) -> M:
    """Build metadata dataclass `cls` from JSON; unknown keys go to its ``extra`` dict (forward compatibility).

    Raises
    ------
    MetadataError
        On malformed JSON or invalid fields (`what` names the metadata in the message).
    """
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise MetadataError(f"{what} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise MetadataError(f"{what} must be a JSON object")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in raw.items() if k in known}
    unknown = {k: v for k, v in raw.items() if k not in known}
    if unknown:
        kwargs["extra"] = {**kwargs.get("extra", {}), **unknown}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise MetadataError(f"invalid {what}: {err}") from err


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def read_props(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _missing_metadata(path: str | Path, kind: type) -> MetadataError:
    return MetadataError(
        f"{path} has no '{kind.METADATA_KEY}' metadata: not a fracscope {kind.KIND} file, or exported "
        "without metadata. Export it with `python -m fracscope.export`."
    )


def metadata_from_props(path: str | Path, props: Mapping[str, str], kind: type[M]) -> M:
    """`kind` (one of `METADATA_CLASSES`) from a file's ``metadata_props``."""
    if kind.METADATA_KEY not in props:  # type: ignore[attr-defined]
        raise _missing_metadata(path, kind)
    return kind.from_json(props[kind.METADATA_KEY])  # type: ignore[attr-defined]


def read_metadata(path: str | Path, kind: type[M] = ModelMetadata) -> M:  # type: ignore[assignment]
    """Read the metadata of `kind` (one of `METADATA_CLASSES`) from an ONNX file.

    Raises
    ------
    MetadataError
        When the file has no metadata of that kind (e.g. a detector file read as a classifier,
        or an ONNX model from elsewhere).
    """
    return metadata_from_props(path, read_props(path), kind)


def write_metadata(path: str | Path,
                   metadata: ModelMetadata | DetectorMetadata | PhaseMetadata | SectionMetadata) -> None:
    """Store `metadata` (replacing any previous one of its kind) in the ONNX file at `path`, in place."""
    import onnx

    model = onnx.load(str(path))
    key = metadata.METADATA_KEY
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, metadata.to_json()
    model.producer_name = "fracscope"
    model.producer_version = fracscope.__version__
    onnx.save(model, str(path))


def _pixel_size_range(value: Any) -> tuple[float, float] | None:
    """A metadata's ``pixel_size_range_um`` as (min, max) floats, or None; MetadataError unless 0 < min <= max."""
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    if not 0 < lo <= hi:
        raise MetadataError(f"pixel_size_range_um must satisfy 0 < min <= max, got {(lo, hi)}")
    return lo, hi


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, for provenance (which model produced a result)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def graph_sha256(path: str | Path) -> str:
    """Hex SHA-256 of an ONNX file's graph (operators and weights), not of its metadata: a class rule or other
    facts written into the metadata later leave it unchanged. What a model trained on another model's
    output records of it (`SectionMetadata.phase_model_sha256`)."""
    import onnx

    return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString(deterministic=True)).hexdigest()


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint on CPU with ``weights_only=True``: no code is unpickled.

    fracscope checkpoints keep plain-typed hyperparameters, so the safe loader suffices. A plain
    state dict (``.pt``) loads too; a Lightning checkpoint has ``state_dict`` and ``hyper_parameters``.

    Raises
    ------
    FileNotFoundError, ValueError (not a readable checkpoint)
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError ...
        raise ValueError(f"{path} is not a readable fracscope checkpoint: {err}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a readable fracscope checkpoint (not a dict)")
    return ckpt


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------


def parse_device(device: str) -> tuple[str, int]:
    """'cpu' | 'cuda' | 'cuda:N' → (kind, index)."""
    kind, _, index = device.partition(":")
    if kind not in DEVICE_KINDS or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return kind, int(index or 0)


def open_onnx_session(path: str | Path, kind: type[M], device: str = "cpu",
                      threads: int | None = None) -> tuple[Any, M]:
    """An onnxruntime session on a model file of `kind`, and the file's metadata.

    Parameters
    ----------
    path: the ``.onnx`` file.
    kind: one of `METADATA_CLASSES`; the file must carry that metadata and the
        graph must have that kind's input and output names.
    device: 'cpu', 'cuda' or 'cuda:N'. CUDA needs the ``onnxruntime-gpu`` package and is checked
        to really run (onnxruntime silently falls back to CPU otherwise).
    threads: intra-op threads (None = onnxruntime's default, all cores).

    Raises
    ------
    ValueError (bad device, a file onnxruntime cannot load), MetadataError, BackendUnavailableError
    """
    import onnxruntime as ort

    from fracscope.ort_options import int8_kernels_exact, session_options

    device_kind, index = parse_device(device)
    available = ort.get_available_providers()
    if device_kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(
                "device=cuda needs onnxruntime-gpu: pip install '.[gpu]' "
                f"(available providers: {', '.join(available)})"
            )
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        options = session_options(threads, int8_reference=device_kind == "cpu" and not int8_kernels_exact())
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        if device_kind == "cuda":
            raise BackendUnavailableError(f"onnxruntime-gpu is installed but CUDA failed to initialise: {err}") from err
        # Not an ONNX file, a truncated one, or a graph this onnxruntime cannot run: the user's file.
        raise ValueError(f"{path} is not a model onnxruntime can load") from err
    if device_kind == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise BackendUnavailableError(
            "onnxruntime-gpu is installed but CUDA failed to initialise (check the NVIDIA driver and "
            "that the CUDA/cuDNN versions match onnxruntime-gpu; session providers: "
            f"{', '.join(session.get_providers())})"
        )
    metadata = metadata_from_props(path, session.get_modelmeta().custom_metadata_map, kind)
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != [kind.INPUT_NAME] or names_out != list(kind.OUTPUT_NAMES):  # type: ignore[attr-defined]
        raise MetadataError(f"{path}: expected input {kind.INPUT_NAME!r} and outputs "  # type: ignore[attr-defined]
                            f"{kind.OUTPUT_NAMES}, found {names_in} → {names_out}")  # type: ignore[attr-defined]
    return session, metadata
