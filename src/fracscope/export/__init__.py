"""Checkpoint → ONNX model file, for every network fracscope ships, along one path.

`export_network` (wrap → ``torch.onnx.export`` → metadata → parity → optional int8 → atomic
replace) serves both kinds; what differs is the wrapper, the graph names and the parity check:

- classifier (`export_onnx`): ``crops: float32 (batch, C, S, S)`` (C = 2: normalised image
  and the particle's own mask) → ``class_probs`` (batch, n_classes) and ``phase_probs``
  (batch, n_phases, S, S), softmax included in the graph so every runtime returns the same
  quantity. The batch axis is dynamic; the crop size is fixed and recorded in the metadata.
- detector (`export_detector`): ``image: float32 (batch, 1, height, width)`` (height and
  width multiples of 32; `LearnedDetector` pads) → ``foreground_prob`` and ``distance``, each
  (batch, 1, height, width), sigmoids included; batch, height and width are dynamic.
- dense phase model (`export_phases`): ``image: float32 (batch, 1, height, width)`` (multiples
  of 32; `fracscope.phase_map.PhaseMapModel` pads each tile) → ``phase_probs`` (batch, 4,
  height, width), softmax included (`PhaseProbabilities`); batch, height and width are dynamic.
- section net (`export_sections`): ``sections: float32 (batch, 4, S, S)`` (the section windows of
  `fracscope.sections`) → ``class_probs`` (batch, n_classes), softmax included
  (`SectionProbabilities`); the batch is dynamic, S fixed and recorded in the metadata. fp32 only.

Everything a consumer needs to use the file correctly travels in its metadata
(`fracscope.model_file`). Parity: `fracscope.export.parity`; int8: `fracscope.export.quantise`.
`export_checkpoint` reads a training checkpoint of any kind. CLI: ``python -m fracscope.export``.

Example
-------
>>> report = export_checkpoint("best.ckpt", "model.onnx")                      # doctest: +SKIP
>>> report = export_checkpoint("best.ckpt", "model_int8.onnx", quantize=True,
...                            calibration=crops)                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fracscope.export.onnx import Graph, export_network, prepare_for_export, probability_wrapper, stamped
from fracscope.export.parity import (
    PARITY_SHAPES,
    ClassifierParity,
    DetectorExportReport,
    DetectorParity,
    ExportParityError,
    ExportReport,
    ParityTolerance,
    PhaseExportReport,
    PhaseParity,
    SectionExportReport,
    SectionParity,
    compare_outputs,
    parity_batch,
    parity_inputs,
)
from fracscope.export.quantise import load_calibration, synthetic_calibration_tiles
from fracscope.model_file import (
    DETECTOR_INPUT_NAME,
    DETECTOR_OUTPUT_NAMES,
    INPUT_NAME,
    OUTPUT_NAMES,
    PHASES_INPUT_NAME,
    PHASES_OUTPUT_NAMES,
    SECTIONS_INPUT_NAME,
    SECTIONS_OUTPUT_NAMES,
    DetectorMetadata,
    ModelMetadata,
    PhaseMetadata,
    SectionMetadata,
    read_metadata,
    write_metadata,
)

__all__ = [
    "DetectorExportReport",
    "ExportParityError",
    "ExportReport",
    "ParityTolerance",
    "PhaseExportReport",
    "SectionExportReport",
    "compare_outputs",
    "export_checkpoint",
    "export_detector",
    "export_network",
    "export_onnx",
    "export_phases",
    "export_sections",
    "load_calibration",
    "parity_batch",
    "parity_inputs",
    "prepare_for_export",
    "set_pore_decision_weight",
    "set_pore_weight",
    "set_postprocess",
]


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
    """Export a (class_logits, phase_logits) particle network to ONNX with probabilities as outputs.

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
    quantize:
        Produce a static int8 QDQ model (calibrated on ``calibration``) instead of fp32.
    calibration:
        float32 (N, C, S, S) real crops for int8 calibration. When None, a generated parity
        batch is used and this is recorded in the metadata (``extra["calibration"]``): fine for
        smoke tests, not for production models.
    tolerance:
        Parity thresholds of the final precision; default :meth:`ParityTolerance.for_precision`.

    Raises
    ------
    ExportParityError
        When onnxruntime's output differs from PyTorch's beyond ``tolerance``.
    """
    size = int(crop_size if crop_size is not None else metadata.crop_size)
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
    meta = stamped(dataclasses.replace(metadata, crop_size=size, extra=extra), quantize)
    wrapper = probability_wrapper(prepare_for_export(network))
    graph = Graph(INPUT_NAME, OUTPUT_NAMES, {0: "batch"}, (2, meta.in_channels, size, size))
    parity = ClassifierParity(wrapper, Path(out_path), meta, opset, tolerance, calibration)
    return export_network(wrapper, out_path, meta, graph, parity, opset, calibration)


def working_scale_calibration(calibration: np.ndarray | None, meta: DetectorMetadata | PhaseMetadata,
                              looks: Sequence[str] = ()) -> tuple[np.ndarray, bool]:
    """int8 calibration tiles (N, C, H, W) at a dense network's working scale: the given ones, checked, or
    `synthetic_calibration_tiles` at its working pixel size (plain fields, and as many in each of `looks`);
    and whether they were generated here."""
    generated = calibration is None
    if generated:
        calibration = synthetic_calibration_tiles(float(meta.working_pixel_size_um), looks=looks)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or calibration.shape[1] != int(meta.in_channels):
        raise ValueError(f"calibration must be (N, {meta.in_channels}, H, W), got {calibration.shape}")
    return calibration, generated


def export_detector(
    network: Any,
    out_path: str | Path,
    metadata: DetectorMetadata,
    opset: int = 17,
    max_abs_diff: float = 1e-4,
    parity_shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES,
    quantize: bool = False,
    calibration: np.ndarray | None = None,
    min_foreground_agreement_pct: float = 98.0,
    calibration_looks: Sequence[str] = (),
) -> DetectorExportReport:
    """Export a `DetectorNet` to ONNX with dynamic batch / height / width and metadata.

    Parameters
    ----------
    network : nn.Module
        ``x (N, 1, H, W) -> (N, 2, H, W)`` [foreground logit, sigmoid distance]; copied,
        the original is untouched.
    metadata : DetectorMetadata
        Facts to embed; ``precision``, ``export_date`` and ``fracscope_version`` are set here.
    max_abs_diff : float
        Largest allowed |onnx - torch| over both outputs and all parity inputs (fp32).
    parity_shapes : sequence of (batch, height, width)
        Parity inputs; height and width multiples of 32.
    quantize : bool
        Write a static int8 QDQ model instead of fp32.
    calibration : ndarray, optional
        float32 (N, 1, H, W) normalised tiles at working scale for int8 calibration;
        default `synthetic_calibration_tiles`.
    min_foreground_agreement_pct : float
        int8 only: smallest allowed share of calibration pixels whose foreground
        decision (probability > 0.5) matches PyTorch's.
    calibration_looks : sequence of str
        Generator looks the default calibration tiles also show (a network trained on them).

    Raises
    ------
    ExportParityError
        When onnxruntime disagrees with PyTorch beyond the thresholds.
    """
    from fracscope.models.detector_net import DetectorProbabilities

    meta = stamped(metadata, quantize)
    if quantize:
        calibration, _ = working_scale_calibration(calibration, meta, calibration_looks)
    wrapper = DetectorProbabilities(prepare_for_export(network)).eval()
    graph = Graph(DETECTOR_INPUT_NAME, DETECTOR_OUTPUT_NAMES, {0: "batch", 2: "height", 3: "width"},
                  (1, int(meta.in_channels), 64, 96))
    parity = DetectorParity(wrapper, Path(out_path), meta, opset, max_abs_diff, parity_shapes, calibration,
                            min_foreground_agreement_pct)
    return export_network(wrapper, out_path, meta, graph, parity, opset, calibration, calibration_batch=4)


def export_phases(
    network: Any,
    out_path: str | Path,
    metadata: PhaseMetadata,
    opset: int = 17,
    max_abs_diff: float = 1e-4,
    parity_shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES,
    quantize: bool = False,
    calibration: np.ndarray | None = None,
    min_phase_agreement_pct: float = 90.0,
) -> PhaseExportReport:
    """Export a `PhaseNet` to ONNX (softmax included) with dynamic batch / height / width and metadata.

    Parameters
    ----------
    network : nn.Module
        ``x (N, 1, H, W) -> (N, 4, H, W)`` phase logits; copied, the original is untouched.
    metadata : PhaseMetadata
        Facts to embed; ``precision``, ``export_date`` and ``fracscope_version`` are set here.
    max_abs_diff : float
        Largest allowed |onnx - torch| probability over all parity inputs (fp32).
    parity_shapes : sequence of (batch, height, width)
        Parity inputs; height and width multiples of 32.
    quantize : bool
        Write a static int8 QDQ model instead of fp32.
    calibration : ndarray, optional
        float32 (N, 1, H, W) normalised tiles at working scale for int8 calibration;
        default `synthetic_calibration_tiles` at the model's working pixel size.
    min_phase_agreement_pct : float
        int8 only: smallest allowed share of calibration pixels whose phase argmax matches
        PyTorch's.

    Raises
    ------
    ExportParityError
        When onnxruntime disagrees with PyTorch beyond the thresholds.
    """
    from fracscope.models.phase_net import PhaseProbabilities

    meta = stamped(metadata, quantize)
    if quantize:
        calibration, generated = working_scale_calibration(calibration, meta)
        if generated:
            meta = dataclasses.replace(meta, extra={**meta.extra, "calibration": (
                f"{len(calibration)} generated synthetic tiles at working scale; not real data")})
    wrapper = PhaseProbabilities(prepare_for_export(network)).eval()
    graph = Graph(PHASES_INPUT_NAME, PHASES_OUTPUT_NAMES, {0: "batch", 2: "height", 3: "width"},
                  (1, int(meta.in_channels), 64, 96))
    parity = PhaseParity(wrapper, Path(out_path), meta, opset, max_abs_diff, parity_shapes, calibration,
                         min_phase_agreement_pct)
    return export_network(wrapper, out_path, meta, graph, parity, opset, calibration, calibration_batch=4)


def export_sections(
    network: Any,
    out_path: str | Path,
    metadata: SectionMetadata,
    opset: int = 17,
    max_abs_diff: float = 1e-4,
) -> SectionExportReport:
    """Export a `SectionNet` to ONNX (softmax included) with a dynamic batch and metadata (fp32 only).

    Parameters
    ----------
    network : nn.Module
        ``x (N, 4, S, S) -> (N, n_classes)`` class logits; copied, the original is untouched.
    metadata : SectionMetadata
        Facts to embed (S = ``metadata.size_px``); ``precision``, ``export_date`` and
        ``fracscope_version`` are set here.
    max_abs_diff : float
        Largest allowed |onnx - torch| probability over the parity windows.

    Raises
    ------
    ExportParityError
        When onnxruntime disagrees with PyTorch beyond `max_abs_diff`.
    """
    from fracscope.models.section_net import SectionProbabilities

    meta = stamped(metadata, quantize=False)
    wrapper = SectionProbabilities(prepare_for_export(network)).eval()
    size = int(meta.size_px)
    graph = Graph(SECTIONS_INPUT_NAME, SECTIONS_OUTPUT_NAMES, {0: "batch"}, (2, len(meta.channels), size, size))
    parity = SectionParity(wrapper, Path(out_path), meta, opset, max_abs_diff)
    return export_network(wrapper, out_path, meta, graph, parity, opset)


def export_checkpoint(
    ckpt_path: str | Path,
    out_path: str | Path,
    quantize: bool = False,
    calibration: np.ndarray | None = None,
    opset: int = 17,
    pore_weight: float | None = None,
    postprocess: Mapping[str, Any] | None = None,
    calibration_looks: Sequence[str] = (),
) -> ExportReport | DetectorExportReport | PhaseExportReport | SectionExportReport:
    """Export a training checkpoint (``.ckpt``) of any kind; see `export_onnx`, `export_detector`,
    `export_phases`, `export_sections`.

    `pore_weight` (classifier) and `postprocess` (detector thresholds) override stored values;
    `calibration_looks` (detector, int8 with generated calibration) adds fields in those generator looks.
    """
    from fracscope.models.checkpoint import load_network

    network, metadata = load_network(ckpt_path)
    if isinstance(metadata, SectionMetadata):
        if pore_weight is not None or postprocess or calibration_looks:
            raise ValueError(f"{ckpt_path} is a section-net checkpoint: pore_weight, post-processing thresholds and "
                             "calibration looks are settings of the other kinds")
        if quantize or calibration is not None:
            raise ValueError(f"{ckpt_path} is a section-net checkpoint: it is exported in fp32 only")
        return export_sections(network, out_path, metadata, opset=opset)
    if isinstance(metadata, PhaseMetadata):
        if pore_weight is not None or postprocess:
            raise ValueError(f"{ckpt_path} is a phase-model checkpoint: pore_weight and post-processing "
                             "thresholds are settings of the other kinds")
        return export_phases(network, out_path, metadata, opset=opset, quantize=quantize, calibration=calibration)
    if isinstance(metadata, DetectorMetadata):
        if pore_weight is not None:
            raise ValueError(f"{ckpt_path} is a detector checkpoint: pore_weight is a classifier setting")
        if postprocess:
            metadata = dataclasses.replace(metadata, postprocess={**metadata.postprocess, **postprocess})
        return export_detector(network, out_path, metadata, opset=opset, quantize=quantize, calibration=calibration,
                               calibration_looks=calibration_looks)
    if calibration_looks:
        raise ValueError(f"{ckpt_path}: calibration looks are a detector export setting")
    if postprocess:
        raise ValueError(f"{ckpt_path} is a classifier checkpoint: post-processing thresholds are detector settings")
    if pore_weight is not None:
        metadata = dataclasses.replace(metadata, pore_weight=float(pore_weight))
    return export_onnx(network, out_path, metadata, opset=opset, quantize=quantize, calibration=calibration)


def set_pore_weight(path: str | Path, pore_weight: float) -> ModelMetadata:
    """Rewrite an exported classifier's ``pore_weight`` in place (the weights are untouched)."""
    metadata = dataclasses.replace(read_metadata(path, ModelMetadata), pore_weight=float(pore_weight))
    write_metadata(path, metadata)
    return metadata


def set_pore_decision_weight(path: str | Path, weight: float) -> PhaseMetadata:
    """Rewrite an exported phase model's ``pore_decision_weight`` in place (the weights are untouched)."""
    metadata = dataclasses.replace(read_metadata(path, PhaseMetadata), pore_decision_weight=float(weight))
    write_metadata(path, metadata)
    return metadata


def set_postprocess(path: str | Path, **overrides: Any) -> DetectorMetadata:
    """Rewrite post-processing settings of an exported detector in place (the weights are untouched)."""
    meta = read_metadata(path, DetectorMetadata)
    meta = dataclasses.replace(meta, postprocess={**meta.postprocess, **overrides})  # validates the keys
    write_metadata(path, meta)
    return meta
