"""Settings of the report stage, read from the `report` section of the run config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fracscope.settings import settings_from_config

#: Equivalent-diameter bins in µm: secondary particles are 5-15 µm (D50 10-12 µm);
#: off-centre cuts make smaller sections, so the first bins start at 0.
DEFAULT_SIZE_BINS_UM: tuple[float, ...] = (0.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, math.inf)


@dataclass(frozen=True)
class ReportOptions:
    """What the report counts and writes.

    count_border_particles : count particles cut by the image border in the class
        fractions (default no: a cut section can hide its cracks, and large particles
        are cut more often, which biases the fractions).
    count_too_small : count particles flagged too small (default no).
    size_bins_um : equivalent-diameter bin edges for class fractions by size.
    n_boot, seed, confidence : bootstrap replicates, seed and interval level.
    review_per_class : crops kept per class for the contact sheets.
    overlay_max_px : longest overlay side; larger images are downsampled.
    overlay_ids : write particle ids on overlays.
    write_overlays, write_instances, write_phases, write_coco, write_plots, write_review :
        switch outputs off for speed.
    """

    count_border_particles: bool = False
    count_too_small: bool = False
    size_bins_um: tuple[float, ...] = DEFAULT_SIZE_BINS_UM
    n_boot: int = 2000
    seed: int = 0
    confidence: float = 0.95
    review_per_class: int = 48
    overlay_max_px: int = 2048
    overlay_ids: bool = True
    write_overlays: bool = True
    write_instances: bool = True
    write_phases: bool = True
    write_coco: bool = True
    write_plots: bool = True
    write_review: bool = True

    def counts(self, touches_border, too_small):
        """Whether particles with these flags are in the class fractions: the one rule that the
        summary, the review sheets and the overlays apply.

        Takes bools or boolean arrays (elementwise); returns a bool or a boolean array.
        """
        border_ok = np.logical_or(self.count_border_particles, np.logical_not(touches_border))
        small_ok = np.logical_or(self.count_too_small, np.logical_not(too_small))
        return np.logical_and(border_ok, small_ok)

    @classmethod
    def from_config(cls, config: Mapping | None) -> ReportOptions:
        """Options from `config["report"]` (missing keys keep their defaults).

        Raises
        ------
        fracscope.settings.SettingsError
            On an unknown key, so a typo does not pass silently.
        """
        return settings_from_config(cls, (config or {}).get("report"), "the report config")
