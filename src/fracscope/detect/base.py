"""The detector interface and how a detector is built from config."""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from fracscope.settings import check_keys, settings_from_config
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

    def estimate_pixel_size_um(self, pixels: np.ndarray) -> float | None:
        """The pixel size this detector estimates for an image that has none; None: it does not
        estimate (the classical detector uses its pixel-unit settings instead)."""
        return None

    def detect_scored(self, image: SEMImage) -> tuple[np.ndarray, np.ndarray | None]:
        """The label map and a confidence per object (label k at index k - 1), or None where the
        detector gives none (this default)."""
        return self.detect(image), None


def _locate(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def detector_factory(cfg: Mapping[str, Any], where: str = "the detect config") -> tuple[Any, dict[str, Any]]:
    """The factory a detector config names and its keyword arguments, the keys checked.

    ``cfg`` has either ``_target_`` (dotted path of a Detector class or factory; the
    other keys are its keyword arguments, as in Hydra) or ``name`` (a key of
    `BUILTIN_DETECTORS`) with the other keys as arguments. OmegaConf configs work too.

    Raises
    ------
    fracscope.settings.SettingsError
        On an argument the factory does not take (see `_check_arguments`).
    """
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
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
    _check_arguments(factory, kwargs, where)
    return factory, kwargs


def _check_arguments(factory: Any, kwargs: Mapping[str, Any], where: str) -> None:
    """Refuse keys the factory does not take, before anything is built.

    A factory that takes ``**settings`` names their dataclass as ``settings_type``
    (`ClassicalDetector`: `ClassicalParams`); a nested detector config (`TiledDetector`'s
    ``detector``) is checked in turn.
    """
    params = inspect.signature(factory).parameters
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    rest = {k: v for k, v in kwargs.items() if k not in named}
    settings_type = getattr(factory, "settings_type", None)
    if settings_type is not None:
        settings_from_config(settings_type, rest, where)
    elif not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        check_keys(rest, named, where)
    for key, value in kwargs.items():
        if isinstance(value, Mapping) and ("_target_" in value or "name" in value):
            detector_factory(value, f"{where} ({key})")


def build_detector(cfg: Mapping[str, Any], where: str = "the detect config") -> Detector:
    """A detector from config (the layout of `detector_factory`).

    Examples
    --------
    >>> build_detector({"name": "classical", "min_diameter_um": 2.0})  # doctest: +SKIP
    """
    factory, kwargs = detector_factory(cfg, where)
    detector = factory(**kwargs)
    if not isinstance(detector, Detector) and not callable(getattr(detector, "detect", None)):
        raise TypeError(f"{type(detector).__name__} has no detect(image) method")
    return detector
