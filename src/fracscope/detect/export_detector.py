"""Detector checkpoint → ONNX with dynamic batch, height and width, metadata and a parity check.

The graph takes ``image: float32 (batch, 1, height, width)`` (height and width
multiples of 32; `LearnedDetector` pads) and returns ``foreground_prob`` and
``distance``, each float32 (batch, 1, height, width), sigmoids included in the graph.
`DetectorMetadata` (working pixel size, normalisation, post-processing thresholds,
provenance) is stored under the ONNX metadata key ``fracscope_detector``.

Parity: onnxruntime and PyTorch are compared on inputs of two different sizes (so the
dynamic height and width are exercised, not just declared); the export fails with
`fracscope.export.ExportParityError` when any output differs by more than
``max_abs_diff`` and the file is not written.

int8: ``quantize=True`` writes a static QDQ int8 model (`fracscope.export.quantize_int8`,
calibrated on real-looking tiles at working scale: synthetic electrode fields unless
``calibration`` is given). fp32 parity is still checked first; the int8 model must then
agree with PyTorch on the foreground (probability > 0.5) of at least
``min_foreground_agreement_pct`` of the calibration pixels, or the export fails.

Reused from `fracscope.export`: `prepare_for_export`, `parity_batch`, `quantize_int8`,
`ExportParityError`.
Not reused: `export_onnx` (fixed square crops, classifier outputs, classifier metadata)
and `write_onnx_metadata` (the classifier's key and schema, which would claim class
and phase names a detector does not have).

CLI: ``python -m fracscope.detect.export_detector CKPT OUT.onnx [--int8]``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracscope.detect.learned import (
    DETECTOR_INPUT_NAME,
    DETECTOR_OUTPUT_NAMES,
    DetectorMetadata,
    read_detector_metadata,
    write_detector_metadata,
)
from fracscope.export import ExportParityError, parity_batch, prepare_for_export, quantize_int8

# (batch, height, width) of the parity inputs: two shapes, neither square.
PARITY_SHAPES: tuple[tuple[int, int, int], ...] = ((2, 96, 160), (1, 192, 64))


@dataclass(frozen=True)
class DetectorExportReport:
    """What an export produced: path, shapes checked and the largest |onnx - torch| difference."""

    path: Path
    opset: int
    shapes: tuple[tuple[int, int, int, int], ...]
    max_abs_diff: float
    size_bytes: int
    metadata: DetectorMetadata
    foreground_agreement_pct: float | None = None
    max_distance_diff: float | None = None

    def summary(self) -> str:
        shapes = ", ".join("x".join(str(s) for s in sh) for sh in self.shapes)
        text = (f"{self.path} ({self.metadata.precision}, {self.size_bytes / 1e6:.1f} MB, opset {self.opset}): "
                f"fp32 parity max |diff| {self.max_abs_diff:.2e} on inputs {shapes}")
        if self.foreground_agreement_pct is not None:
            text += (f"; int8 vs PyTorch on calibration tiles: foreground agreement "
                     f"{self.foreground_agreement_pct:.2f} %, max |Δdistance| {self.max_distance_diff:.3f}")
        return text


def parity_inputs(shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES, seed: int = 0) -> list[np.ndarray]:
    """Structured + noise images (N, 1, H, W) of each shape, from `fracscope.export.parity_batch`."""
    out = []
    for k, (n, h, w) in enumerate(shapes):
        side = max(h, w)
        base = parity_batch(side, in_channels=1, n_random=1, n_structured=max(1, n - 1), seed=seed + k)
        out.append(np.ascontiguousarray(base[:n, :, :h, :w], dtype=np.float32))
    return out


def _torch_maps(wrapper: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.inference_mode():
        fg, dist = wrapper(torch.from_numpy(x))
    return fg.numpy(), dist.numpy()


def _ort_maps(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fg, dist = sess.run(list(DETECTOR_OUTPUT_NAMES), {DETECTOR_INPUT_NAME: x})
    return fg, dist


def synthetic_calibration_tiles(working_pixel_size_um: float, n_tiles: int = 32, tile_px: int = 256,
                                seed: int = 4321) -> np.ndarray:
    """float32 (n_tiles, 1, tile_px, tile_px) normalised tiles at working scale for int8 calibration.

    Random tiles of synthetic electrode fields of both presets from the training synth
    config at a seed training does not use (never the held-out config).
    """
    from fracscope.detect.learned import normalise_image, to_working_scale
    from fracscope.synth import load_config, make_field

    rng = np.random.default_rng(seed)
    tiles = []
    presets = ("gp", "p")
    n_fields = 4
    for k in range(n_fields):
        cfg = load_config(presets[k % 2], ["electrode.field_px=[1024,1024]"])
        item = make_field(cfg, seed, k)
        work = normalise_image(to_working_scale(np.asarray(item.image.pixels),
                                                float(item.image.pixel_size_um) / working_pixel_size_um))
        h, w = work.shape
        side = min(tile_px, h, w) // 32 * 32
        for _ in range(-(-n_tiles // n_fields)):
            r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            tiles.append(work[r : r + side, c : c + side])
    side = min(t.shape[0] for t in tiles)
    return np.stack([t[:side, :side] for t in tiles[:n_tiles]])[:, None].astype(np.float32)


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
) -> DetectorExportReport:
    """Export a `DetectorNet` to ONNX with dynamic batch / height / width and metadata.

    Parameters
    ----------
    network : nn.Module
        ``x (N, 1, H, W) -> (N, 2, H, W)`` [foreground logit, sigmoid distance]; copied,
        the original is untouched.
    out_path : str or Path
        Destination ``.onnx``.
    metadata : DetectorMetadata
        Facts to embed; ``precision``, ``export_date`` and ``fracscope_version`` are set here.
    opset : int
        ONNX opset.
    max_abs_diff : float
        Largest allowed |onnx - torch| over both outputs and all parity inputs.
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

    Returns
    -------
    DetectorExportReport

    Raises
    ------
    ExportParityError
        When onnxruntime disagrees with PyTorch beyond ``max_abs_diff``.
    """
    import torch

    import fracscope
    from fracscope.models.detector_net import DetectorProbabilities

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = dataclasses.replace(
        metadata,
        precision="int8" if quantize else "fp32",
        fracscope_version=fracscope.__version__,
        export_date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    wrapper = DetectorProbabilities(prepare_for_export(network)).eval()
    dummy = torch.zeros(1, int(meta.in_channels), 64, 96)
    axes = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory(prefix=".fracscope_export_", dir=out_path.parent) as tmp:
        built = Path(tmp) / "detector.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper, (dummy,), str(built),
                input_names=[DETECTOR_INPUT_NAME], output_names=list(DETECTOR_OUTPUT_NAMES),
                dynamic_axes={DETECTOR_INPUT_NAME: axes, **{n: axes for n in DETECTOR_OUTPUT_NAMES}},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        write_detector_metadata(built, meta)
        worst = 0.0
        shapes = []
        for x in parity_inputs(parity_shapes):
            ref, got = _torch_maps(wrapper, x), _ort_maps(built, x)
            worst = max(worst, *(float(np.max(np.abs(a - b))) for a, b in zip(ref, got, strict=True)))
            shapes.append(tuple(int(s) for s in x.shape))
        if not worst <= max_abs_diff:
            raise ExportParityError(
                f"detector ONNX export disagrees with PyTorch (max |diff| {worst:.3g} > {max_abs_diff:.3g}); "
                f"{out_path} was not written"
            )
        agreement = distance_diff = None
        if quantize:
            if calibration is None:
                calibration = synthetic_calibration_tiles(float(meta.working_pixel_size_um))
            calibration = np.ascontiguousarray(calibration, dtype=np.float32)
            if calibration.ndim != 4 or calibration.shape[1] != int(meta.in_channels):
                raise ValueError(f"calibration must be (N, {meta.in_channels}, H, W), got {calibration.shape}")
            fp32 = built
            built = Path(tmp) / "detector_int8.onnx"
            quantize_int8(fp32, built, calibration, Path(tmp), input_name=DETECTOR_INPUT_NAME, batch_size=4)
            write_detector_metadata(built, meta)
            check = calibration[:8]
            (fg_ref, d_ref), (fg_q, d_q) = _torch_maps(wrapper, check), _ort_maps(built, check)
            agreement = 100.0 * float(np.mean((fg_ref > 0.5) == (fg_q > 0.5)))
            distance_diff = float(np.max(np.abs(d_ref - d_q)))
        report = DetectorExportReport(out_path, opset, tuple(shapes), worst, built.stat().st_size, meta,
                                      agreement, distance_diff)
        if agreement is not None and not agreement >= min_foreground_agreement_pct:
            raise ExportParityError(
                f"int8 detector agrees with PyTorch on only {agreement:.2f} % of foreground pixels "
                f"(< {min_foreground_agreement_pct} %); {out_path} was not written"
            )
        os.replace(built, out_path)
    return report


def load_detector_checkpoint(path: str | Path) -> tuple[Any, DetectorMetadata]:
    """Rebuild the `DetectorNet` and its `DetectorMetadata` from a `DetectorModule` checkpoint."""
    from fracscope.models.detector_net import build_detector_net
    from fracscope.runtime import load_checkpoint_dict

    ckpt = load_checkpoint_dict(path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    if not isinstance(hp.get("net"), dict):
        raise ValueError(f"{path}: no network config in hyper_parameters (keys {sorted(hp)})")
    net = build_detector_net({k: v for k, v in hp["net"].items() if k != "channels_last"})
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state, strict=True)
    net.eval()
    return net, metadata_from_hparams(hp)


def metadata_from_hparams(hp: dict) -> DetectorMetadata:
    """`DetectorMetadata` from a `DetectorModule`'s hyperparameters (plain dicts)."""
    cfg = dict(hp.get("config") or {})
    defaults = DetectorMetadata()
    best = {k: v for k, v in dict(cfg.get("best_metrics") or {}).items() if isinstance(v, (int, float))}
    used = {"working_pixel_size_um", "normalisation", "training_data", "synth_version", "best_metrics",
            "encoder", "in_channels"}
    return DetectorMetadata(
        working_pixel_size_um=float(cfg.get("working_pixel_size_um", defaults.working_pixel_size_um)),
        normalisation=dict(cfg.get("normalisation") or defaults.normalisation),
        postprocess=dict(hp.get("postprocess") or defaults.postprocess),
        encoder=str(hp["net"].get("encoder", "")),
        in_channels=int(hp["net"].get("in_channels", 1)),
        training_data=str(cfg.get("training_data", "")),
        synth_version=cfg.get("synth_version"),
        metrics=best,
        extra={k: v for k, v in cfg.items() if k not in used},
    )


def export_detector_checkpoint(ckpt_path: str | Path, out_path: str | Path, opset: int = 17,
                               postprocess: dict | None = None, quantize: bool = False) -> DetectorExportReport:
    """Export a `DetectorModule` checkpoint; `postprocess` overrides stored thresholds."""
    net, meta = load_detector_checkpoint(ckpt_path)
    if postprocess:
        meta = dataclasses.replace(meta, postprocess={**meta.postprocess, **postprocess})
    return export_detector(net, out_path, meta, opset=opset, quantize=quantize)


def set_postprocess(path: str | Path, **overrides: Any) -> DetectorMetadata:
    """Rewrite post-processing settings of an exported detector in place (the weights are untouched)."""
    meta = read_detector_metadata(path)
    meta = dataclasses.replace(meta, postprocess={**meta.postprocess, **overrides})  # validates the keys
    write_detector_metadata(path, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m fracscope.detect.export_detector CKPT OUT.onnx [--foreground-threshold T ...]``.

    ``python -m fracscope.detect.export_detector DETECTOR.onnx --min-score S`` (or any threshold
    option) only rewrites that file's post-processing settings.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fracscope.detect.export_detector", description=main.__doc__)
    parser.add_argument("checkpoint", type=Path, help="DetectorModule .ckpt (or an exported .onnx to re-set)")
    parser.add_argument("out", type=Path, nargs="?", default=None, help="destination .onnx")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--foreground-threshold", type=float, default=None)
    parser.add_argument("--seed-threshold", type=float, default=None)
    parser.add_argument("--min-score", type=float, default=None,
                        help="drop objects whose mean foreground probability is lower (default 0: keep all)")
    parser.add_argument("--int8", action="store_true", help="static int8 QDQ, calibrated on synthetic fields")
    args = parser.parse_args(argv)
    post = {k: v for k, v in (("foreground_threshold", args.foreground_threshold),
                               ("seed_threshold", args.seed_threshold),
                               ("min_score", args.min_score)) if v is not None}
    if args.checkpoint.suffix == ".onnx":
        if args.out is not None or args.int8 or not post:
            parser.error("an .onnx input only takes threshold options (it is rewritten in place)")
        print(f"{args.checkpoint}: postprocess {set_postprocess(args.checkpoint, **post).postprocess}")
        return 0
    if args.out is None:
        parser.error("give the destination .onnx file")
    print(export_detector_checkpoint(args.checkpoint, args.out, args.opset, post, quantize=args.int8).summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
