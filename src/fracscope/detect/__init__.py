"""Particle detectors behind one interface: ``Detector.detect(SEMImage) -> uint32 labels``.

`ClassicalDetector` (threshold, morphology, watershed) needs no training; a learned
detector plugs in through `build_detector` with a ``_target_``. `match_instances`
scores a label map against ground truth.
"""

from fracscope.detect.base import BUILTIN_DETECTORS, Detector, build_detector
from fracscope.detect.classical import ClassicalDetector, ClassicalParams, PixelFallback
from fracscope.detect.matching import MatchResult, iou_table, match_instances

__all__ = [
    "BUILTIN_DETECTORS",
    "ClassicalDetector",
    "ClassicalParams",
    "Detector",
    "MatchResult",
    "PixelFallback",
    "build_detector",
    "iou_table",
    "match_instances",
]
