"""``python -m fracscope.export``: a training checkpoint → ONNX model file, or re-set a model file's settings."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from fracscope.cli import ArgumentParser, usage_errors
from fracscope.export import (
    export_checkpoint,
    load_calibration,
    set_pore_decision_weight,
    set_pore_weight,
    set_postprocess,
)
from fracscope.model_file import DETECTOR_METADATA_KEY, PHASES_METADATA_KEY, SECTIONS_METADATA_KEY, read_props

DESCRIPTION = """\
Export a fracscope training checkpoint (particle classifier, learned detector, dense phase
model or section net; the kind is read from the checkpoint) to an ONNX model file with its metadata, after a parity check
against PyTorch. --int8 writes a static int8 model instead.

Given an exported .onnx instead of a checkpoint, only rewrites settings stored in it, in place:
--pore-weight (classifier), --pore-decision-weight (phase model) or the detector thresholds
(--foreground-threshold, --seed-threshold, --min-score).

examples:
  python -m fracscope.export runs/.../best.ckpt models/my_model.onnx --int8 --calibration crops.npy
  python -m fracscope.export runs/detector/last.ckpt detector.onnx --min-score 0.9
  python -m fracscope.export models/fracscope_default.onnx --pore-weight 1.2
"""


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="fracscope-export", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="training .ckpt (or an exported .onnx to re-set in place)")
    parser.add_argument("out", type=Path, nargs="?", default=None, help="destination .onnx file")
    parser.add_argument("--int8", action="store_true", help="static int8 QDQ quantization")
    parser.add_argument("--calibration", type=Path, default=None,
                        help=".npy/.npz of real inputs (N, C, H, W) for int8 calibration (default: generated)")
    parser.add_argument("--calibration-limit", type=int, default=256, help="use at most this many (default 256)")
    parser.add_argument("--calibration-looks", default="", metavar="LOOK[,LOOK]",
                        help="detector --int8 without --calibration: also calibrate on generated fields in these "
                             "generator looks (e.g. infiltrated), for a detector trained on them")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    classifier = parser.add_argument_group("classifier")
    classifier.add_argument("--pore-weight", type=float, default=None,
                            help="pore probability factor on the source grid (ModelMetadata.pore_weight; default 1)")
    phases = parser.add_argument_group("phase model")
    phases.add_argument("--pore-decision-weight", type=float, default=None,
                        help="factor on the pore probability before each pixel's phase is chosen "
                             "(PhaseMetadata.pore_decision_weight; default 1)")
    detector = parser.add_argument_group("detector post-processing (override the checkpoint's)")
    detector.add_argument("--foreground-threshold", type=float, default=None)
    detector.add_argument("--seed-threshold", type=float, default=None)
    detector.add_argument("--min-score", type=float, default=None,
                          help="drop objects whose score (mean foreground probability over their foreground pixels) is lower (default 0: keep all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export CLI; returns the exit status (usage errors: one line, status 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    with usage_errors(parser.prog):  # a wrong file or an option of the other kind
        return _export(parser, args)


def _export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    post = {k: v for k, v in (("foreground_threshold", args.foreground_threshold),
                               ("seed_threshold", args.seed_threshold),
                               ("min_score", args.min_score)) if v is not None}
    if args.checkpoint.suffix == ".onnx":
        if args.out is not None or args.int8 or args.calibration is not None:
            parser.error("an .onnx input is rewritten in place: it takes only --pore-weight, "
                         "--pore-decision-weight or threshold options")
        props = read_props(args.checkpoint)
        if SECTIONS_METADATA_KEY in props:
            parser.error("a section-net .onnx has no settings to re-set")
        if PHASES_METADATA_KEY in props:
            if args.pore_decision_weight is None or post or args.pore_weight is not None:
                parser.error("a phase-model .onnx takes only --pore-decision-weight")
            meta = set_pore_decision_weight(args.checkpoint, args.pore_decision_weight)
            print(f"{args.checkpoint}: pore_decision_weight {meta.pore_decision_weight}")
            return 0
        if args.pore_decision_weight is not None:
            parser.error("--pore-decision-weight is a phase-model setting")
        if DETECTOR_METADATA_KEY in props:
            if not post or args.pore_weight is not None:
                parser.error("a detector .onnx takes only threshold options (--foreground-threshold, ...)")
            print(f"{args.checkpoint}: postprocess {set_postprocess(args.checkpoint, **post).postprocess}")
            return 0
        if args.pore_weight is None or post:
            parser.error("a classifier .onnx takes only --pore-weight")
        print(f"{args.checkpoint}: pore_weight {set_pore_weight(args.checkpoint, args.pore_weight).pore_weight}")
        return 0
    if args.out is None:
        parser.error("give the destination .onnx file")
    if args.pore_decision_weight is not None:
        parser.error("--pore-decision-weight re-sets an exported phase-model .onnx; export first")
    calib = load_calibration(args.calibration, args.calibration_limit) if args.calibration else None
    looks = tuple(x for x in args.calibration_looks.split(",") if x)
    report = export_checkpoint(args.checkpoint, args.out, quantize=args.int8, calibration=calib,
                               opset=args.opset, pore_weight=args.pore_weight, postprocess=post,
                               calibration_looks=looks)
    print(report.summary())
    print(f"sha256 {report.sha256}")
    return 0
