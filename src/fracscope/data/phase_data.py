"""Training data of the native-resolution phase model: whole fields at its working pixel size.

Each source image (a synthetic electrode field, or an annotated image of a user dataset with
a phase map) is resampled ONCE to the phase model's working pixel size (default 0.05 µm/px)
with `fracscope.detect.learned.to_working_scale` and normalised by percentiles over the
whole resampled field: exactly what `fracscope.phase_map` does at inference. A generated field with
filled (bright) pores is first turned into what the model sees of such an image at inference,
`fracscope.polarity.fill_darkened`. The phase map
goes through `fracscope.crop.resize_phase_map` (nearest, cracks kept connected when
shrinking). Targets are the four phase codes of `fracscope.types.Phase` for every pixel.

Tiles, augmentation, the split and the cache follow the detector's data
(`fracscope.data.detector_data`): random tiles for training, a fixed grid for validation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fracscope.crop import NORM_PERCENTILES, resize_phase_map
from fracscope.data.detector_data import FieldDataModule, _pad_to
from fracscope.detect.learned import normalise_image, to_working_scale, working_shape
from fracscope.polarity import fill_darkened
from fracscope.types import PHASE_NAMES, AnnotatedImage

PHASE_FIELD_CACHE_VERSION = 2  # 2: bright-pore fields with their fill darkened
DEFAULT_PHASE_PIXEL_SIZE_UM = 0.05


@dataclass
class PhaseField:
    """One source image at working scale: image float16 (H, W) in [0, 1], phases uint8 codes."""

    image: np.ndarray
    phases: np.ndarray
    pixel_size_um: float

    @property
    def area(self) -> int:
        return int(self.image.size)


def prepare_phase_field(item: AnnotatedImage, working_pixel_size_um: float,
                        pixel_size_um: float | None = None) -> PhaseField:
    """Resample, normalise and resize the phase target of one annotated image.

    Raises
    ------
    ValueError
        When the image has no phase map, or no pixel size and none is given.
    """
    if item.phases is None:
        raise ValueError(f"{item.stem}: the phase model needs a phase map")
    px = pixel_size_um or item.image.pixel_size_um
    if px is None or not px > 0:
        raise ValueError(f"{item.stem}: no pixel size; give data.assume_pixel_size_um")
    scale = float(px) / float(working_pixel_size_um)
    image = normalise_image(to_working_scale(network_pixels(item), scale), NORM_PERCENTILES)
    phases = resize_phase_map(np.asarray(item.phases, np.uint8), working_shape(np.shape(item.image.pixels), scale))
    return PhaseField(image.astype(np.float16), phases, float(px))


def has_filled_pores(item: AnnotatedImage) -> bool:
    """Whether a generated field was rendered with bright (Pt- or resin-filled) pores."""
    return "infiltrated" in item.meta.get("looks", ()) or item.meta.get("pore_polarity") == "bright"


def network_pixels(item: AnnotatedImage) -> np.ndarray:
    """A generated field's pixels as the networks see them at inference (`LocatedParticles.pixels_for_networks`):
    its fill darkened where it was rendered with filled pores, else as they are."""
    return fill_darkened(item.image.pixels) if has_filled_pores(item) else item.image.pixels


def save_phase_fields(path: Path, fields: Sequence[PhaseField]) -> None:
    """All fields in one ``.npz`` (atomic replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"pixel_size_um": np.asarray([f.pixel_size_um for f in fields], np.float32)}
    for i, f in enumerate(fields):
        arrays[f"image_{i}"] = f.image
        arrays[f"phases_{i}"] = f.phases
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_phase_fields(path: Path) -> list[PhaseField]:
    """Read `save_phase_fields` output."""
    with np.load(path) as z:
        px = z["pixel_size_um"]
        return [PhaseField(z[f"image_{i}"], z[f"phases_{i}"], float(px[i])) for i in range(len(px))]


def _sample(field: PhaseField, r: int, c: int, tile: int) -> dict[str, np.ndarray]:
    sl = (slice(r, r + tile), slice(c, c + tile))
    return {"image": _pad_to(field.image[sl].astype(np.float32), tile),
            "phases": _pad_to(field.phases[sl], tile)}


def _as_batch(sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        "x": torch.from_numpy(np.ascontiguousarray(sample["image"][None], dtype=np.float32)),
        "phases": torch.from_numpy(np.ascontiguousarray(sample["phases"], dtype=np.int64)),
    }


class PhaseDataModule(FieldDataModule):
    """Fields for the native-resolution phase model (`fracscope.data.detector_data.FieldDataModule`: the same
    parameters, default working pixel size 0.05 µm/px): the image and its phase map at working scale."""

    KIND = "phases"
    CACHE_VERSION = PHASE_FIELD_CACHE_VERSION
    DEFAULT_WORKING_PIXEL_SIZE_UM = DEFAULT_PHASE_PIXEL_SIZE_UM

    def prepare(self, item: AnnotatedImage, pixel_size_um: float | None) -> PhaseField:
        return prepare_phase_field(item, self.working_pixel_size_um, pixel_size_um)

    save = staticmethod(save_phase_fields)
    load = staticmethod(load_phase_fields)
    sample = staticmethod(_sample)
    as_batch = staticmethod(_as_batch)

    def phase_fractions(self) -> list[float]:
        """Share of each phase over the training fields (reported in the checkpoint)."""
        counts = np.zeros(len(PHASE_NAMES))
        for i in self.train_idx:
            counts += np.bincount(self.fields[i].phases.ravel(), minlength=len(PHASE_NAMES))[: len(PHASE_NAMES)]
        return [float(c) for c in counts / max(counts.sum(), 1)]

    def describe(self) -> dict:
        """Plain-typed facts stored in the checkpoint and, at export, in the model file."""
        from fracscope.synth import SYNTH_VERSION

        px = np.asarray([f.pixel_size_um for f in self.fields], float)
        source = self.synth.describe() if self.path is None else f"dataset {self.path} ({self.format})"
        if self.path is None and self.synth.imaging_ranges:
            source += f"; imaging drawn per field from {dict(sorted(dict(self.synth.imaging_ranges).items()))}"
        return {
            "task": "phase_map",
            "working_pixel_size_um": self.working_pixel_size_um,
            "tile_px": self.tile_px,
            "in_channels": 1,
            "normalisation": {"method": "percentile", "low_pct": NORM_PERCENTILES[0], "high_pct": NORM_PERCENTILES[1],
                              "over": "whole image at working scale (fracscope.detect.learned.normalise_image)"},
            "pixel_size_range_um": [float(px.min()), float(px.max())],
            # A dataset's pores are taken as dark (empty) unless a user's dataset says otherwise in a later schema.
            "pore_polarities": self.synth.pore_polarities() if self.path is None else ["dark"],
            "synth_version": SYNTH_VERSION if self.path is None else None,
            "phase_fractions": self.phase_fractions(),
            "training_data": f"{source}; resampled to {self.working_pixel_size_um} um/px; "
            f"{len(self.train_idx)} train / {len(self.val_idx)} val images",
            "augment": asdict(self.augment),
            "split_seed": self.seed,
        }
