"""The detector interface and how a detector is built from config."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from fracscope.types import SEMImage

# Built-in detectors by short name; anything else is reached through `_target_`.
BUILTIN_DETECTORS: Mapping[str, str] = {
    "classical": "fracscope.detect.classical.ClassicalDetector",
    "learned": "fracscope.detect.learned.LearnedDetector",
    "tiled": "fracscope.detect.tiling.TiledDetector",
}


class Detector(ABC):
    """Finds particle sections in an SEM page.

    ``detect`` returns a uint32 instance label map of the image's shape: 0 = not a
    particle, particles labelled 1..N consecutively. A broken particle, fragments
    included, is one label; its pores and cracks belong to it (filled section).
    """

    name: str = "detector"
    # Smaller sections (area-equivalent diameter, µm) are not particles. The pipeline applies it
    # again to the final outline, which the phase model may have trimmed. None: no minimum.
    min_diameter_um: float | None = None

    @abstractmethod
    def detect(self, image: SEMImage) -> np.ndarray:
        """Instance label map of `image`."""


def _locate(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def build_detector(cfg: Mapping[str, Any]) -> Detector:
    """A detector from config.

    ``cfg`` has either ``_target_`` (dotted path of a Detector class or factory; the
    other keys are its keyword arguments, as in Hydra) or ``name`` (a key of
    `BUILTIN_DETECTORS`) with the other keys as arguments. OmegaConf configs work too.

    Examples
    --------
    >>> build_detector({"name": "classical", "min_diameter_um": 2.0})  # doctest: +SKIP
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    kwargs = dict(cfg)
    if "_target_" in kwargs:
        factory = _locate(kwargs.pop("_target_"))
    elif "name" in kwargs:
        name = kwargs.pop("name")
        if name not in BUILTIN_DETECTORS:
            raise KeyError(f"unknown detector {name!r}; known: {sorted(BUILTIN_DETECTORS)}")
        factory = _locate(BUILTIN_DETECTORS[name])
    else:
        raise KeyError("detector config needs `_target_` or `name`")
    detector = factory(**kwargs)
    if not isinstance(detector, Detector) and not callable(getattr(detector, "detect", None)):
        raise TypeError(f"{type(detector).__name__} has no detect(image) method")
    return detector
