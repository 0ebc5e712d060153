"""Particle detectors behind one interface: ``Detector.detect(SEMImage) -> uint32 labels``.

`ClassicalDetector` (threshold, morphology, watershed) needs no training; a learned
detector plugs in through `build_detector` with a ``_target_``. `match_instances`
scores a label map against ground truth.
"""

from fracscope.detect.base import BUILTIN_DETECTORS, Detector, build_detector, detector_factory
from fracscope.detect.classical import ClassicalDetector, ClassicalParams, PixelFallback
from fracscope.detect.matching import MatchResult, iou_table, match_instances
from fracscope.detect.postprocess import labels_from_maps, maps_from_labels
from fracscope.detect.tiling import TiledDetector, detect_tiled

__all__ = [
    "BUILTIN_DETECTORS",
    "ClassicalDetector",
    "ClassicalParams",
    "Detector",
    "MatchResult",
    "PixelFallback",
    "TiledDetector",
    "build_detector",
    "detect_tiled",
    "detector_factory",
    "iou_table",
    "labels_from_maps",
    "maps_from_labels",
    "match_instances",
]
