"""Checkpoint → ONNX with embedded metadata, a parity check, and optional static int8.

The exported graph takes ``crops: float32 (batch, C, S, S)`` (C = 2: normalised image and the
particle's own mask) and returns **probabilities**, softmax included in the graph:

- ``class_probs``: float32 (batch, n_classes), rows sum to 1, in ``class_names`` order;
- ``phase_probs``: float32 (batch, n_phases, S, S), softmax over the phase axis.

Softmax lives in the graph so every runtime (onnxruntime CPU/GPU, eager torch) returns the same
quantity without re-implementing it. The batch axis is dynamic (named ``batch``); the crop size is
fixed and recorded in the metadata.

Everything a consumer needs to use the file correctly (class/phase names, crop size, margin,
normalisation, the pixel-size range and pore polarities seen in training, precision ...) travels
in the ONNX ``metadata_props`` under the key ``fracscope`` as JSON (:class:`ModelMetadata`).

Parity: after export, onnxruntime and PyTorch are run on a fixed random + structured batch.
For fp32 the export fails with :class:`ExportParityError` when the max abs probability difference
exceeds ``ParityTolerance.max_prob_diff`` (default 1e-4). For int8 the check is looser and
reported as agreement (class argmax %, phase argmax pixel %, max prob diff); only a floor on phase
pixel agreement is enforced. Accuracy of int8 versus fp32 on labelled data belongs to a benchmark.

Example
-------
>>> report = export_checkpoint("best.ckpt", "model.onnx")                      # doctest: +SKIP
>>> report = export_checkpoint("best.ckpt", "model_int8.onnx", quantize=True,
...                            calibration=crops)                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fracscope
from fracscope.onnx_metadata import dataclass_from_json, read_props, write_prop
from fracscope.types import CLASS_NAMES, PHASE_NAMES

METADATA_KEY = "fracscope"
METADATA_SCHEMA_VERSION = 1
INPUT_NAME = "crops"
OUTPUT_NAMES: tuple[str, str] = ("class_probs", "phase_probs")
PRECISIONS: tuple[str, ...] = ("fp32", "int8")


class ExportParityError(RuntimeError):
    """The exported graph disagrees with the PyTorch network beyond the stated tolerance.

    ``report`` holds the measured differences (its ``path`` was not written).
    """

    def __init__(self, message: str, report: ExportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class MetadataError(ValueError):
    """A model file carries no, or invalid, fracscope metadata."""


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file must say about itself for inference to use it correctly.

    Attributes
    ----------
    class_names, phase_names:
        Output channel names, in index order.
    crop_size:
        Edge length S of the square input crop (pixels).
    in_channels:
        Input channels (2: normalised image, own mask).
    margin:
        Crop margin around the particle bounding box used in training (fraction of its size,
        as the crop module defines it).
    normalisation:
        How the image channel was normalised, e.g. ``{"method": "percentile", "low_pct": 1.0,
        "high_pct": 99.0}``.
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

    class_names: tuple[str, ...] = CLASS_NAMES
    phase_names: tuple[str, ...] = PHASE_NAMES
    crop_size: int = 128
    in_channels: int = 2
    margin: float = 0.15
    normalisation: dict[str, Any] = field(default_factory=dict)
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
        if int(self.crop_size) <= 0:
            raise MetadataError(f"crop_size must be positive, got {self.crop_size}")
        if int(self.in_channels) <= 0:
            raise MetadataError(f"in_channels must be positive, got {self.in_channels}")
        if not float(self.pore_weight) > 0:
            raise MetadataError(f"pore_weight must be positive, got {self.pore_weight}")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("pixel_size_range_um", "crop_pixel_size_range_um"):
            value = getattr(self, name)
            if value is not None and not 0 < value[0] <= value[1]:
                raise MetadataError(f"{name} must satisfy 0 < min <= max, got {value}")
        if self.schema_version > METADATA_SCHEMA_VERSION:
            raise MetadataError(
                f"metadata schema {self.schema_version} is newer than this fracscope understands "
                f"({METADATA_SCHEMA_VERSION}); upgrade fracscope"
            )

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
        return dataclass_from_json(cls, text, MetadataError, "fracscope metadata")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> ModelMetadata:
        """Build from a Lightning checkpoint's ``hyper_parameters`` (plain types).

        ``ParticleModule`` stores ``{"net": NetConfig fields, "config": facts for export, ...}``;
        both are read (flat hyperparameters work too). Accepts a few spellings per field so that
        small naming differences in the training module do not break export; missing fields keep
        their defaults. Other plain ``config`` entries (augmentation, split seed, ...) are kept
        in ``extra`` for provenance.
        """
        hp = dict(hparams)
        nested = [n for n in ("cfg", "config", "net", "model") if isinstance(hp.get(n), Mapping)]
        config = dict(hp.get("config") or hp.get("cfg") or {}) if nested else {}
        for nest in nested:
            hp = {**dict(hp[nest]), **{k: v for k, v in hp.items() if k != nest}}
        used: set[str] = set()

        def pick(*names: str, default: Any = None) -> Any:
            used.update(names)
            for n in names:
                if n in hp and hp[n] is not None:
                    return hp[n]
            return default

        norm = pick("normalisation", "normalization", default=None)
        pcts = pick("norm_percentiles", "percentiles")
        if norm is None:
            lo = pick("norm_low_pct", "percentile_low", "low_pct")
            hi = pick("norm_high_pct", "percentile_high", "high_pct")
            if pcts is not None and lo is None:
                lo, hi = pcts
            norm = {"method": "percentile", "low_pct": lo, "high_pct": hi} if lo is not None else {}
        psr = pick("pixel_size_range_um", "pixel_size_range")
        crop_psr = pick("crop_pixel_size_range_um")
        metrics = pick("metrics", "best_metrics", "val_metrics", default={}) or {}
        kwargs: dict[str, Any] = dict(
            class_names=tuple(pick("class_names", default=CLASS_NAMES)),
            phase_names=tuple(pick("phase_names", default=PHASE_NAMES)),
            crop_size=int(pick("crop_size", "input_size", "image_size", default=128)),
            in_channels=int(pick("in_channels", default=2)),
            margin=float(pick("margin", "crop_margin", default=0.15)),
            normalisation=dict(norm),
            encoder=str(pick("encoder", "encoder_name", "backbone", default="")),
            pixel_size_range_um=tuple(psr) if psr is not None else None,
            crop_pixel_size_range_um=tuple(crop_psr) if crop_psr is not None else None,
            pore_polarities=tuple(pick("pore_polarities", "polarities", default=())),
            synth_version=None if pick("synth_version") is None else str(pick("synth_version")),
            training_data=str(pick("training_data", "data_description", default="")),
            metrics={k: float(v) for k, v in dict(metrics).items() if _is_number(v)},
        )
        kwargs["extra"] = {k: v for k, v in config.items() if k not in used and _is_plain(v)}
        return cls(**kwargs)


def _is_plain(v: Any) -> bool:
    """Whether ``v`` survives a JSON round trip (plain types only)."""
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """Read :class:`ModelMetadata` from an ONNX file's ``metadata_props``.

    Raises
    ------
    MetadataError
        When the file has no ``fracscope`` metadata (e.g. an ONNX model from elsewhere).
    """
    props = read_props(path)
    if METADATA_KEY not in props:
        raise MetadataError(
            f"{path} has no '{METADATA_KEY}' metadata: not a fracscope model file, or exported "
            "without metadata. Export it with `python -m fracscope.export`."
        )
    return ModelMetadata.from_json(props[METADATA_KEY])


def write_onnx_metadata(path: str | Path, metadata: ModelMetadata) -> None:
    """Store ``metadata`` (replacing any previous one) in the ONNX file at ``path``, in place."""
    write_prop(path, METADATA_KEY, metadata.to_json())


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityTolerance:
    """Pass/fail thresholds of the export parity check (None = report only).

    max_prob_diff: largest allowed |p_onnx - p_torch| over class and phase probabilities.
    min_phase_agreement_pct: smallest allowed share of pixels with the same phase argmax.
    min_class_agreement_pct: smallest allowed share of samples with the same class argmax.
    """

    max_prob_diff: float | None = 1e-4
    min_phase_agreement_pct: float | None = None
    min_class_agreement_pct: float | None = None

    @classmethod
    def for_precision(cls, precision: str) -> ParityTolerance:
        """Defaults: fp32 is exact to 1e-4; int8 only needs 80 % phase-pixel argmax agreement.

        Class argmax agreement is not enforced for int8: on the parity batch many samples sit
        near the decision boundary, so it is reported, and judged in the benchmark on real data.
        """
        if precision == "int8":
            return cls(max_prob_diff=None, min_phase_agreement_pct=80.0)
        return cls()


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how closely it matches PyTorch.

    Diffs and agreements are measured on ``n_samples`` crops (random + structured,
    plus calibration crops for int8).
    """

    path: Path
    precision: str
    opset: int
    n_samples: int
    max_class_prob_diff: float
    max_phase_prob_diff: float
    class_argmax_agreement_pct: float
    phase_argmax_agreement_pct: float
    tolerance: ParityTolerance
    size_bytes: int
    sha256: str
    metadata: ModelMetadata

    @property
    def max_prob_diff(self) -> float:
        """Largest abs probability difference over both outputs."""
        return max(self.max_class_prob_diff, self.max_phase_prob_diff)

    def summary(self) -> str:
        """One human-readable line."""
        return (
            f"{self.path.name} [{self.precision}, opset {self.opset}, {self.size_bytes / 1e6:.2f} MB]: "
            f"max |Δp| class {self.max_class_prob_diff:.2e} phase {self.max_phase_prob_diff:.2e}; "
            f"argmax agreement class {self.class_argmax_agreement_pct:.1f} % "
            f"phase {self.phase_argmax_agreement_pct:.2f} % (n={self.n_samples})"
        )


def _probability_wrapper(network: Any) -> Any:
    """Wrap a (class_logits, phase_logits) network so it returns softmax probabilities."""
    import torch

    class _Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            class_logits, phase_logits = self.net(x)
            return torch.softmax(class_logits, dim=1), torch.softmax(phase_logits, dim=1)

    return _Probabilities(network)


def prepare_for_export(network: Any) -> Any:
    """An fp32, eval-mode, contiguous-format CPU copy of ``network`` (the original is untouched)."""
    import torch

    net = copy.deepcopy(network).to(device="cpu", dtype=torch.float32)
    net = net.to(memory_format=torch.contiguous_format)  # channels_last-free export
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def parity_batch(crop_size: int, in_channels: int = 2, n_random: int = 4, n_structured: int = 4,
                 seed: int = 0) -> np.ndarray:
    """A fixed batch for parity checks: noise crops plus disc-shaped 'particles' with pores and cracks.

    Values follow what the network sees (``fracscope.crop``): channel 0 is an intensity in
    [0, 1] (bright solid, darker matrix, dark pores/cracks), channel 1 a binary own mask;
    further channels (if any) are uniform noise.

    Returns
    -------
    float32 (n_random + n_structured, in_channels, S, S)
    """
    rng = np.random.default_rng(seed)
    s = crop_size
    noise = rng.random((n_random, in_channels, s, s), dtype=np.float32)
    if in_channels > 1:
        noise[:, 1] = noise[:, 1] > 0.5
    yy, xx = np.mgrid[:s, :s].astype(np.float32)
    structured = np.zeros((n_structured, in_channels, s, s), np.float32)
    for i in range(n_structured):
        cy, cx = s / 2 + rng.uniform(-0.1, 0.1, 2) * s
        r = s * rng.uniform(0.25, 0.4)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        img = np.where(disc, rng.uniform(0.6, 0.8), rng.uniform(0.1, 0.3)).astype(np.float32)
        for _ in range(int(rng.integers(3, 12))):  # dark pores inside the particle
            py, px = cy + rng.uniform(-0.7, 0.7, 2) * r
            pr = rng.uniform(0.03, 0.1) * r
            img[((yy - py) ** 2 + (xx - px) ** 2 <= pr**2) & disc] = 0.05
        if i % 2:  # a crack across every other particle
            ang = rng.uniform(0, np.pi)
            dist = np.abs((yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang))
            img[(dist < max(1.0, s / 80)) & disc] = 0.02
        img += rng.normal(0, 0.04, (s, s)).astype(np.float32)
        structured[i, 0] = np.clip(img, 0.0, 1.0)
        if in_channels > 1:
            structured[i, 1] = disc
        if in_channels > 2:
            structured[i, 2:] = rng.random((in_channels - 2, s, s))
    return np.concatenate([noise, structured]).astype(np.float32)


def _torch_probs(net: Any, x: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    import torch

    outs_c, outs_p = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            c, p = net(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])))
            outs_c.append(c.numpy())
            outs_p.append(p.numpy())
    return np.concatenate(outs_c), np.concatenate(outs_p)


def _ort_probs(path: Path, x: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outs_c, outs_p = [], []
    for i in range(0, len(x), batch_size):
        c, p = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x[i : i + batch_size]})
        outs_c.append(c)
        outs_p.append(p)
    return np.concatenate(outs_c), np.concatenate(outs_p)


def compare_outputs(reference: tuple[np.ndarray, np.ndarray],
                    candidate: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Max abs prob diffs and argmax agreement (%) between two (class_probs, phase_probs) pairs."""
    rc, rp = reference
    cc, cp = candidate
    return {
        "max_class_prob_diff": float(np.max(np.abs(rc - cc))),
        "max_phase_prob_diff": float(np.max(np.abs(rp - cp))),
        "class_argmax_agreement_pct": float(100.0 * np.mean(rc.argmax(1) == cc.argmax(1))),
        "phase_argmax_agreement_pct": float(100.0 * np.mean(rp.argmax(1) == cp.argmax(1))),
    }


def _check_tolerance(report: ExportReport, stats: Mapping[str, float]) -> None:
    tol = report.tolerance
    failures = []
    worst = max(stats["max_class_prob_diff"], stats["max_phase_prob_diff"])
    if tol.max_prob_diff is not None and not worst <= tol.max_prob_diff:
        failures.append(f"max |Δprob| {worst:.3g} > {tol.max_prob_diff:.3g}")
    if (tol.min_phase_agreement_pct is not None
            and stats["phase_argmax_agreement_pct"] < tol.min_phase_agreement_pct):
        failures.append(f"phase argmax agreement {stats['phase_argmax_agreement_pct']:.2f} % "
                        f"< {tol.min_phase_agreement_pct} %")
    if (tol.min_class_agreement_pct is not None
            and stats["class_argmax_agreement_pct"] < tol.min_class_agreement_pct):
        failures.append(f"class argmax agreement {stats['class_argmax_agreement_pct']:.1f} % "
                        f"< {tol.min_class_agreement_pct} %")
    if failures:
        raise ExportParityError(
            f"{report.precision} ONNX export disagrees with PyTorch ({'; '.join(failures)}); "
            f"{report.path} was not written",
            report,
        )


class _CropReader:
    """onnxruntime CalibrationDataReader over an array of inputs, in small batches."""

    def __init__(self, crops: np.ndarray, batch_size: int = 8, input_name: str = INPUT_NAME) -> None:
        self._crops = crops
        self._batch_size = batch_size
        self._input_name = input_name
        self._it: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def rewind(self) -> None:
        self._it = iter(
            {self._input_name: np.ascontiguousarray(self._crops[i : i + self._batch_size])}
            for i in range(0, len(self._crops), self._batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, workdir: Path,
                  input_name: str = INPUT_NAME, batch_size: int = 8) -> None:
    """Static QDQ int8: per-channel int8 weights, uint8 activations calibrated on ``calibration``.

    Shared by the particle network and the detector (`fracscope.detect.export_detector`).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_CropReader, CalibrationDataReader):
        pass

    pre = workdir / "preprocessed.onnx"
    # Folds constants / fuses Conv+BN and infers shapes, which gives cleaner quantization.
    # Symbolic shape inference trips over Resize with a dynamic batch; ONNX shape inference suffices.
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out_path),
        calibration_data_reader=Reader(calibration, batch_size, input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # uint8 activations + int8 weights (U8S8) is onnxruntime's recommended CPU combination.
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def _legacy_export(net: Any, dummy: Any, path: Path, opset: int) -> None:
    """TorchScript-based export with a dynamic batch axis named ``batch``."""
    import torch

    torch.onnx.export(
        net,
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def export_onnx(
    network: Any,
    out_path: str | Path,
    metadata: ModelMetadata,
    crop_size: int | None = None,
    opset: int = 17,
    quantize: bool = False,
    calibration: np.ndarray | None = None,
    tolerance: ParityTolerance | None = None,
) -> ExportReport:
    """Export a (class_logits, phase_logits) network to ONNX with probabilities as outputs.

    Parameters
    ----------
    network:
        ``nn.Module`` with ``forward(x: (N, C, S, S)) -> (class_logits (N, K), phase_logits
        (N, P, S, S))``. It is copied; the original is not modified.
    out_path:
        Destination ``.onnx`` file (parent folders are created).
    metadata:
        Facts to embed; ``precision``, ``export_date``, ``fracscope_version`` and ``crop_size``
        are overwritten with the values of this export.
    crop_size:
        Input edge length S; defaults to ``metadata.crop_size``.
    opset:
        ONNX opset.
    quantize:
        Produce a static int8 QDQ model (calibrated on ``calibration``) instead of fp32.
    calibration:
        float32 (N, C, S, S) real crops for int8 calibration. When None, the generated parity
        batch is used and this is recorded in the metadata (``extra["calibration"]``) — fine for
        smoke tests, not for production models.
    tolerance:
        Parity thresholds; default :meth:`ParityTolerance.for_precision`.

    Returns
    -------
    ExportReport

    Raises
    ------
    ExportParityError
        When onnxruntime's output differs from PyTorch's beyond ``tolerance``.
    """
    import torch

    from fracscope.runtime import sha256_of

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    precision = "int8" if quantize else "fp32"
    size = int(crop_size if crop_size is not None else metadata.crop_size)
    tol = tolerance if tolerance is not None else ParityTolerance.for_precision(precision)

    extra = dict(metadata.extra)
    if quantize:
        if calibration is None:
            calibration = parity_batch(size, metadata.in_channels, n_random=8, n_structured=24, seed=1)
            extra["calibration"] = f"generated structured crops (n={len(calibration)}); not real data"
        else:
            calibration = np.asarray(calibration, dtype=np.float32)
            expected = (metadata.in_channels, size, size)
            if calibration.ndim != 4 or calibration.shape[1:] != expected:
                raise ValueError(f"calibration must be (N, {expected[0]}, {size}, {size}), got {calibration.shape}")
            extra["calibration"] = f"{len(calibration)} crops supplied at export"
    meta = dataclasses.replace(
        metadata,
        crop_size=size,
        precision=precision,
        fracscope_version=fracscope.__version__,
        export_date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra=extra,
    )

    net = _probability_wrapper(prepare_for_export(network)).eval()
    dummy = torch.zeros(2, meta.in_channels, size, size, dtype=torch.float32)
    # Build in a temp folder beside out_path: a file that fails parity never appears there,
    # and the final rename is atomic (same file system).
    with tempfile.TemporaryDirectory(prefix=".fracscope_export_", dir=out_path.parent) as tmp:
        tmpdir = Path(tmp)
        fp32_path = tmpdir / "fp32.onnx"
        with warnings.catch_warnings():
            # The legacy exporter announces its deprecation on every call; dynamo=True was also seen
            # to work (same parity) but exports slower and noisier, so stay on the mature path.
            warnings.simplefilter("ignore", DeprecationWarning)
            _legacy_export(net, dummy, fp32_path, opset)
        built = fp32_path
        if quantize:
            built = tmpdir / "int8.onnx"
            quantize_int8(fp32_path, built, calibration, tmpdir)
        write_onnx_metadata(built, meta)

        x = parity_batch(size, meta.in_channels)
        if quantize:
            x = np.concatenate([x, calibration[:16]])
        stats = compare_outputs(_torch_probs(net, x), _ort_probs(built, x))
        report = ExportReport(
            path=out_path,
            precision=precision,
            opset=opset,
            n_samples=len(x),
            tolerance=tol,
            size_bytes=built.stat().st_size,
            sha256=sha256_of(built),
            metadata=meta,
            **stats,
        )
        _check_tolerance(report, stats)
        os.replace(built, out_path)
    return report


def export_checkpoint(
    ckpt_path: str | Path,
    out_path: str | Path,
    quantize: bool = False,
    calibration: np.ndarray | None = None,
    opset: int = 17,
    tolerance: ParityTolerance | None = None,
    pore_weight: float | None = None,
) -> ExportReport:
    """Export a Lightning checkpoint (``.ckpt``) to ONNX; see :func:`export_onnx`."""
    from fracscope.runtime import load_network_from_checkpoint

    network, metadata = load_network_from_checkpoint(ckpt_path)
    if pore_weight is not None:
        metadata = dataclasses.replace(metadata, pore_weight=float(pore_weight))
    return export_onnx(network, out_path, metadata, opset=opset, quantize=quantize,
                       calibration=calibration, tolerance=tolerance)


def load_calibration(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Load calibration crops saved as ``.npy`` (N, C, S, S) or ``.npz`` (key ``crops``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration file not found: {path}")
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        if "crops" not in data:
            raise KeyError(f"{path}: .npz calibration file needs a 'crops' array, has {list(data.keys())}")
        data = data["crops"]
    data = np.asarray(data, dtype=np.float32)
    return data[:limit] if limit else data


def set_pore_weight(path: str | Path, pore_weight: float) -> ModelMetadata:
    """Rewrite an exported model's ``pore_weight`` in place (the weights are untouched)."""
    metadata = dataclasses.replace(read_onnx_metadata(path), pore_weight=float(pore_weight))
    write_onnx_metadata(path, metadata)
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m fracscope.export CKPT OUT.onnx [--int8 --calibration crops.npy] [--pore-weight W]``.

    ``python -m fracscope.export MODEL.onnx --pore-weight W`` only rewrites that file's pore weight.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fracscope.export", description=main.__doc__)
    parser.add_argument("checkpoint", type=Path, help="Lightning .ckpt file (or an .onnx file with --pore-weight)")
    parser.add_argument("out", type=Path, nargs="?", default=None, help="destination .onnx file")
    parser.add_argument("--int8", action="store_true", help="static int8 QDQ quantization")
    parser.add_argument("--calibration", type=Path, default=None,
                        help=".npy/.npz of real crops (N, C, S, S) for int8 calibration")
    parser.add_argument("--calibration-limit", type=int, default=256)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--pore-weight", type=float, default=None,
                        help="pore probability factor on the source grid (ModelMetadata.pore_weight; default 1)")
    args = parser.parse_args(argv)
    if args.checkpoint.suffix == ".onnx":
        if args.out is not None or args.pore_weight is None:
            parser.error("an .onnx input only takes --pore-weight (it is rewritten in place)")
        metadata = set_pore_weight(args.checkpoint, args.pore_weight)
        print(f"{args.checkpoint}: pore_weight {metadata.pore_weight}")
        return 0
    if args.out is None:
        parser.error("give the destination .onnx file")
    calib = load_calibration(args.calibration, args.calibration_limit) if args.calibration else None
    report = export_checkpoint(args.checkpoint, args.out, quantize=args.int8, calibration=calib, opset=args.opset,
                               pore_weight=args.pore_weight)
    print(report.summary())
    print(f"sha256 {report.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
