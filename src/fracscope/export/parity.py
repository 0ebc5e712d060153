"""Parity: does the exported graph compute what the PyTorch network computes?

Each network kind has a check (`ClassifierParity`, `DetectorParity`) that `export_network`
calls on the fp32 file and again on the int8 file; it returns the kind's report or raises
:class:`ExportParityError`, and the file is then not written.

- Classifier: onnxruntime and PyTorch run on a fixed random + structured batch
  (`parity_batch`). fp32 fails when the max abs probability difference exceeds
  ``ParityTolerance.max_prob_diff`` (default 1e-4). int8 is reported as agreement (class
  argmax %, phase argmax pixel %, max prob diff); only a floor on phase pixel agreement is
  enforced. Accuracy of int8 versus fp32 on labelled data belongs to a benchmark.
- Detector: fp32 is compared on inputs of two different sizes (`PARITY_SHAPES`), so the
  dynamic height and width are exercised, not just declared; int8 must agree with PyTorch on
  the foreground (probability > 0.5) of ``min_foreground_agreement_pct`` of the calibration
  pixels.
- Dense phase model: fp32 as the detector's (two input sizes, max |Δprob|); int8 must give
  the same phase argmax as PyTorch on ``min_phase_agreement_pct`` of the calibration pixels.
- Section net (`SectionParity`): fp32 only, max |Δprob| on a batch of random + structured
  windows (`parity_batch` with four channels), in two batch sizes so the dynamic batch is
  exercised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracscope.model_file import (
    DetectorMetadata,
    ModelMetadata,
    PhaseMetadata,
    SectionMetadata,
    open_onnx_session,
    sha256_of,
)

# (batch, height, width) of the detector's parity inputs: two shapes, neither square.
PARITY_SHAPES: tuple[tuple[int, int, int], ...] = ((2, 96, 160), (1, 192, 64))


class ExportParityError(RuntimeError):
    """The exported graph disagrees with the PyTorch network beyond the stated tolerance.

    ``report`` holds the measured differences (its ``path`` was not written).
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ParityTolerance:
    """Pass/fail thresholds of the classifier's parity check (None = report only).

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
    """What a classifier export produced and how closely it matches PyTorch.

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


@dataclass(frozen=True)
class DetectorExportReport:
    """What a detector export produced: path, shapes checked and the largest |onnx - torch| difference."""

    path: Path
    opset: int
    shapes: tuple[tuple[int, int, int, int], ...]
    max_abs_diff: float
    size_bytes: int
    metadata: DetectorMetadata
    foreground_agreement_pct: float | None = None
    max_distance_diff: float | None = None
    sha256: str = ""

    @property
    def precision(self) -> str:
        return self.metadata.precision

    def summary(self) -> str:
        shapes = ", ".join("x".join(str(s) for s in sh) for sh in self.shapes)
        text = (f"{self.path} ({self.metadata.precision}, {self.size_bytes / 1e6:.1f} MB, opset {self.opset}): "
                f"fp32 parity max |diff| {self.max_abs_diff:.2e} on inputs {shapes}")
        if self.foreground_agreement_pct is not None:
            text += (f"; int8 vs PyTorch on calibration tiles: foreground agreement "
                     f"{self.foreground_agreement_pct:.2f} %, max |Δdistance| {self.max_distance_diff:.3f}")
        return text


@dataclass(frozen=True)
class PhaseExportReport:
    """What a phase-model export produced: fp32 parity on the shapes checked and, for int8,
    agreement of the phase argmax with PyTorch on the calibration tiles."""

    path: Path
    opset: int
    shapes: tuple[tuple[int, int, int, int], ...]
    max_abs_diff: float
    size_bytes: int
    metadata: PhaseMetadata
    phase_agreement_pct: float | None = None
    max_prob_diff_int8: float | None = None
    sha256: str = ""

    @property
    def precision(self) -> str:
        return self.metadata.precision

    def summary(self) -> str:
        shapes = ", ".join("x".join(str(s) for s in sh) for sh in self.shapes)
        text = (f"{self.path} ({self.metadata.precision}, {self.size_bytes / 1e6:.1f} MB, opset {self.opset}): "
                f"fp32 parity max |Δprob| {self.max_abs_diff:.2e} on inputs {shapes}")
        if self.phase_agreement_pct is not None:
            text += (f"; int8 vs PyTorch on calibration tiles: phase argmax agreement "
                     f"{self.phase_agreement_pct:.2f} %, max |Δprob| {self.max_prob_diff_int8:.3f}")
        return text


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


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


def parity_inputs(shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES, seed: int = 0) -> list[np.ndarray]:
    """Structured + noise images (N, 1, H, W) of each shape, cut from `parity_batch`."""
    out = []
    for k, (n, h, w) in enumerate(shapes):
        side = max(h, w)
        base = parity_batch(side, in_channels=1, n_random=1, n_structured=max(1, n - 1), seed=seed + k)
        out.append(np.ascontiguousarray(base[:n, :, :h, :w], dtype=np.float32))
    return out


def torch_outputs(wrapper: Any, x: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, ...]:
    """The exported wrapper's outputs (a tensor or a tuple of them) in eager PyTorch, in batches of `batch_size`."""
    import torch

    parts = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out = wrapper(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])))
            parts.append([t.numpy() for t in ((out,) if isinstance(out, torch.Tensor) else out)])
    return tuple(np.concatenate(outs) for outs in zip(*parts, strict=True))


def onnx_outputs(path: Path, kind: type, x: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, ...]:
    """The model file's outputs in onnxruntime (CPU), in batches of `batch_size`."""
    session, _ = open_onnx_session(path, kind, "cpu")
    parts = [session.run(list(kind.OUTPUT_NAMES), {kind.INPUT_NAME: x[i : i + batch_size]})
             for i in range(0, len(x), batch_size)]
    return tuple(np.concatenate(outs) for outs in zip(*parts, strict=True))


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


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


@dataclass
class ClassifierParity:
    """Parity of a classifier export; `tolerance` applies to the final precision (default per precision)."""

    wrapper: Any
    out_path: Path
    metadata: ModelMetadata
    opset: int
    tolerance: ParityTolerance | None = None
    calibration: np.ndarray | None = None

    def __call__(self, path: Path, precision: str) -> ExportReport:
        meta = self.metadata
        x = parity_batch(meta.crop_size, meta.in_channels)
        if precision == "int8" and self.calibration is not None:
            x = np.concatenate([x, self.calibration[:16]])
        stats = compare_outputs(torch_outputs(self.wrapper, x), onnx_outputs(path, ModelMetadata, x))
        tol = self.tolerance
        if tol is None or precision != meta.precision:
            tol = ParityTolerance.for_precision(precision)
        report = ExportReport(path=self.out_path, precision=precision, opset=self.opset, n_samples=len(x),
                              tolerance=tol, size_bytes=path.stat().st_size, sha256=sha256_of(path),
                              metadata=meta, **stats)
        _check_tolerance(report, stats)
        return report


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


@dataclass
class DetectorParity:
    """Parity of a detector export: exact on two input sizes (fp32), foreground agreement (int8)."""

    wrapper: Any
    out_path: Path
    metadata: DetectorMetadata
    opset: int
    max_abs_diff: float = 1e-4
    parity_shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES
    calibration: np.ndarray | None = None
    min_foreground_agreement_pct: float = 98.0
    _fp32: DetectorExportReport | None = None

    def __call__(self, path: Path, precision: str) -> DetectorExportReport:
        if precision == "fp32":
            worst, shapes = 0.0, []
            for x in parity_inputs(self.parity_shapes):
                ref, got = torch_outputs(self.wrapper, x), onnx_outputs(path, DetectorMetadata, x)
                worst = max(worst, *(float(np.max(np.abs(a - b))) for a, b in zip(ref, got, strict=True)))
                shapes.append(tuple(int(s) for s in x.shape))
            if not worst <= self.max_abs_diff:
                raise ExportParityError(
                    f"detector ONNX export disagrees with PyTorch (max |diff| {worst:.3g} > {self.max_abs_diff:.3g}); "
                    f"{self.out_path} was not written"
                )
            self._fp32 = DetectorExportReport(self.out_path, self.opset, tuple(shapes), worst, path.stat().st_size,
                                              self.metadata, sha256=sha256_of(path))
            return self._fp32
        assert self._fp32 is not None and self.calibration is not None, "int8 is checked after fp32"
        check = self.calibration[:8]
        (fg_ref, d_ref), (fg_q, d_q) = (torch_outputs(self.wrapper, check, 4),
                                        onnx_outputs(path, DetectorMetadata, check, 4))
        agreement = 100.0 * float(np.mean((fg_ref > 0.5) == (fg_q > 0.5)))
        report = dataclasses.replace(self._fp32, size_bytes=path.stat().st_size, sha256=sha256_of(path),
                                     foreground_agreement_pct=agreement,
                                     max_distance_diff=float(np.max(np.abs(d_ref - d_q))))
        if not agreement >= self.min_foreground_agreement_pct:
            raise ExportParityError(
                f"int8 detector agrees with PyTorch on only {agreement:.2f} % of foreground pixels "
                f"(< {self.min_foreground_agreement_pct} %); {self.out_path} was not written", report
            )
        return report


@dataclass
class PhaseParity:
    """Parity of a phase-model export: exact on two input sizes (fp32), phase argmax agreement (int8)."""

    wrapper: Any
    out_path: Path
    metadata: PhaseMetadata
    opset: int
    max_abs_diff: float = 1e-4
    parity_shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES
    calibration: np.ndarray | None = None
    min_phase_agreement_pct: float = 90.0
    _fp32: PhaseExportReport | None = None

    def __call__(self, path: Path, precision: str) -> PhaseExportReport:
        if precision == "fp32":
            worst, shapes = 0.0, []
            for x in parity_inputs(self.parity_shapes):
                (ref,), (got,) = torch_outputs(self.wrapper, x), onnx_outputs(path, PhaseMetadata, x)
                worst = max(worst, float(np.max(np.abs(ref - got))))
                shapes.append(tuple(int(s) for s in x.shape))
            if not worst <= self.max_abs_diff:
                raise ExportParityError(
                    f"phase-model ONNX export disagrees with PyTorch (max |Δprob| {worst:.3g} > "
                    f"{self.max_abs_diff:.3g}); {self.out_path} was not written"
                )
            self._fp32 = PhaseExportReport(self.out_path, self.opset, tuple(shapes), worst, path.stat().st_size,
                                           self.metadata, sha256=sha256_of(path))
            return self._fp32
        assert self._fp32 is not None and self.calibration is not None, "int8 is checked after fp32"
        check = self.calibration[:8]
        (ref,), (got,) = torch_outputs(self.wrapper, check, 4), onnx_outputs(path, PhaseMetadata, check, 4)
        agreement = 100.0 * float(np.mean(ref.argmax(1) == got.argmax(1)))
        report = dataclasses.replace(self._fp32, size_bytes=path.stat().st_size, sha256=sha256_of(path),
                                     phase_agreement_pct=agreement, max_prob_diff_int8=float(np.max(np.abs(ref - got))))
        if not agreement >= self.min_phase_agreement_pct:
            raise ExportParityError(
                f"int8 phase model agrees with PyTorch on the phase of only {agreement:.2f} % of pixels "
                f"(< {self.min_phase_agreement_pct} %); {self.out_path} was not written", report
            )
        return report


@dataclass(frozen=True)
class SectionExportReport:
    """What a section-net export produced: fp32 parity (max |Δprob|) on `n_samples` windows in `batch_sizes`."""

    path: Path
    opset: int
    n_samples: int
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    class_argmax_agreement_pct: float
    size_bytes: int
    metadata: SectionMetadata
    sha256: str = ""

    @property
    def precision(self) -> str:
        return self.metadata.precision

    def summary(self) -> str:
        return (f"{self.path} ({self.metadata.precision}, {self.size_bytes / 1e6:.2f} MB, opset {self.opset}): "
                f"fp32 parity max |Δprob| {self.max_abs_diff:.2e}, class argmax agreement "
                f"{self.class_argmax_agreement_pct:.1f} % on {self.n_samples} windows (batches of "
                f"{', '.join(str(b) for b in self.batch_sizes)})")


@dataclass
class SectionParity:
    """Parity of a section-net export (fp32 only): random + structured windows, run in two batch sizes."""

    wrapper: Any
    out_path: Path
    metadata: SectionMetadata
    opset: int
    max_abs_diff: float = 1e-4
    batch_sizes: tuple[int, ...] = (8, 3)

    def __call__(self, path: Path, precision: str) -> SectionExportReport:
        if precision != "fp32":
            raise ExportParityError(f"the section net is exported in fp32 only; {self.out_path} was not written")
        meta = self.metadata
        x = parity_batch(int(meta.size_px), len(meta.channels), n_random=6, n_structured=6, seed=0)
        worst, agree = 0.0, []
        for b in self.batch_sizes:
            (ref,), (got,) = torch_outputs(self.wrapper, x, b), onnx_outputs(path, SectionMetadata, x, b)
            worst = max(worst, float(np.max(np.abs(ref - got))))
            agree.append(float(100.0 * np.mean(ref.argmax(1) == got.argmax(1))))
        report = SectionExportReport(self.out_path, self.opset, len(x), tuple(self.batch_sizes), worst, min(agree),
                                     path.stat().st_size, meta, sha256=sha256_of(path))
        if not worst <= self.max_abs_diff:
            raise ExportParityError(
                f"section-net ONNX export disagrees with PyTorch (max |Δprob| {worst:.3g} > {self.max_abs_diff:.3g}); "
                f"{self.out_path} was not written", report)
        return report
