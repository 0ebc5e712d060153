"""Training data of the native-resolution phase model: whole fields at its working pixel size.

Each source image (a synthetic electrode field, or an annotated image of a user dataset with
a phase map) is resampled ONCE to the phase model's working pixel size (default 0.05 µm/px)
with `fracscope.detect.learned.to_working_scale` and normalised by percentiles over the
whole resampled field: exactly what `fracscope.phase_map` does at inference. The phase map
goes through `fracscope.crop.resize_phase_map` (nearest, cracks kept connected when
shrinking). Targets are the four phase codes of `fracscope.types.Phase` for every pixel.

Tiles, augmentation, the split and the cache follow the detector's data
(`fracscope.data.detector_data`): random tiles for training, a fixed grid for validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from fracscope.crop import NORM_PERCENTILES, resize_phase_map
from fracscope.data.datamodule import LoaderSpec, cache_root, split_indices
from fracscope.data.detector_data import FieldSynthSpec, GridTiles, RandomTiles, TileAugmentSpec, _pad_to
from fracscope.detect.learned import normalise_image, to_working_scale, working_shape
from fracscope.settings import settings_from_config
from fracscope.types import PHASE_NAMES, AnnotatedImage

PHASE_FIELD_CACHE_VERSION = 1
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
    image = normalise_image(to_working_scale(item.image.pixels, scale), NORM_PERCENTILES)
    phases = resize_phase_map(np.asarray(item.phases, np.uint8), working_shape(np.shape(item.image.pixels), scale))
    return PhaseField(image.astype(np.float16), phases, float(px))


def _field_job(job: tuple) -> AnnotatedImage:
    from fracscope.synth import make_field

    cfg, seed, index = job
    return make_field(cfg, seed, index)


def generate_fields(spec: FieldSynthSpec, workers: int | None = None) -> Iterator[AnnotatedImage]:
    """Every field of `spec`, in order (the images do not depend on `workers`)."""
    jobs = [(cfg, int(spec.seed) * 1000 + j, i) for j, cfg in enumerate(spec.jobs()) for i in range(int(spec.n_fields))]
    workers = min(len(jobs), os.cpu_count() or 1) if workers is None else int(workers)
    if workers <= 1:
        yield from map(_field_job, jobs)
        return
    import multiprocessing as mp

    from fracscope.child_process import die_with_parent

    with mp.get_context("fork").Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        yield from pool.imap(_field_job, jobs)


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


class PhaseDataModule(L.LightningDataModule):
    """Fields for the native-resolution phase model: cached synthetic fields, or a user dataset.

    Parameters
    ----------
    path : str, optional
        Dataset folder / COCO json readable by `fracscope.data.read_dataset`, with phase
        maps; None for the synthetic fields of `synth`.
    format : str
        `read_dataset` format ("auto" detects it).
    working_pixel_size_um : float
        Pixel size the network works at (default 0.05 µm/px).
    assume_pixel_size_um : float, optional
        Pixel size of dataset images that carry none.
    tile_px, tiles_per_epoch, max_val_tiles :
        Tile side at working scale (multiple of 32), random training tiles per epoch, cap
        on the validation grid.
    synth, augment, loader : spec objects or dicts
        `FieldSynthSpec`, `TileAugmentSpec`, `LoaderSpec`.
    workers : int, optional
        Processes that generate the synthetic fields (None = one per core).
    """

    def __init__(
        self,
        path: str | None = None,
        format: str = "auto",
        working_pixel_size_um: float = DEFAULT_PHASE_PIXEL_SIZE_UM,
        assume_pixel_size_um: float | None = None,
        tile_px: int = 256,
        tiles_per_epoch: int = 1024,
        max_val_tiles: int | None = 96,
        synth: FieldSynthSpec | dict | None = None,
        augment: TileAugmentSpec | dict | None = None,
        loader: LoaderSpec | dict | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__()
        if tile_px % 32 or tile_px < 32:
            raise ValueError(f"tile_px must be a positive multiple of 32, got {tile_px}")
        self.path = str(path) if path else None
        self.format = format
        self.working_pixel_size_um = float(working_pixel_size_um)
        self.assume_pixel_size_um = assume_pixel_size_um
        self.tile_px = int(tile_px)
        self.tiles_per_epoch = int(tiles_per_epoch)
        self.max_val_tiles = int(max_val_tiles) if max_val_tiles else None
        self.synth = settings_from_config(FieldSynthSpec, synth, "the data config's synth section")
        self.augment = settings_from_config(TileAugmentSpec, augment, "the data config's augment section")
        if not isinstance(loader, LoaderSpec):
            loader = settings_from_config(LoaderSpec, {"batch_size": 8, **(loader or {})},
                                          "the data config's loader section")
        self.loader = loader
        self.workers = workers
        self.fields: list[PhaseField] | None = None
        self.train_idx = self.val_idx = np.zeros(0, int)

    def cache_path(self) -> Path:
        """Where the prepared synthetic fields live (hash of the spec and the working scale)."""
        parts = [PHASE_FIELD_CACHE_VERSION, self.working_pixel_size_um, list(NORM_PERCENTILES), self.synth.key_parts()]
        key = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cache_root() / f"phases-{key}" / "fields.npz"

    def _load(self) -> list[PhaseField]:
        if self.path is not None:
            from fracscope.data import read_dataset

            items = read_dataset(self.path, format=self.format)
            return [prepare_phase_field(it, self.working_pixel_size_um, self.assume_pixel_size_um) for it in items]
        cache = self.cache_path()
        if cache.exists():
            return load_phase_fields(cache)
        fields = [prepare_phase_field(it, self.working_pixel_size_um) for it in generate_fields(self.synth, self.workers)]
        save_phase_fields(cache, fields)
        return fields

    def prepare_data(self) -> None:
        if self.path is None:
            self._load()

    def setup(self, stage: str | None = None) -> None:
        if self.fields is not None:
            return
        self.fields = self._load()
        if not self.fields:
            raise ValueError("the phase dataset holds no image")
        self.train_idx, self.val_idx = split_indices(np.arange(len(self.fields)), self.loader.val_fraction,
                                                     self.loader.seed)

    def train_dataset(self) -> RandomTiles:
        return RandomTiles([self.fields[i] for i in self.train_idx], self.tile_px, self.tiles_per_epoch,
                           self.augment, _sample, _as_batch)

    def val_dataset(self) -> GridTiles:
        return GridTiles([self.fields[i] for i in self.val_idx], self.tile_px, self.max_val_tiles, _sample, _as_batch)

    def train_dataloader(self) -> DataLoader:
        n = self.loader.num_workers
        return DataLoader(self.train_dataset(), batch_size=self.loader.batch_size, shuffle=False, num_workers=n,
                          drop_last=self.tiles_per_epoch > self.loader.batch_size, persistent_workers=n > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=self.loader.batch_size, shuffle=False,
                          num_workers=self.loader.num_workers)

    def class_weights(self) -> None:
        """No classes here (`fracscope.models.train.run` asks every data module)."""
        return None

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
            "synth_version": SYNTH_VERSION if self.path is None else None,
            "phase_fractions": self.phase_fractions(),
            "training_data": f"{source}; resampled to {self.working_pixel_size_um} um/px; "
            f"{len(self.train_idx)} train / {len(self.val_idx)} val images",
            "augment": asdict(self.augment),
            "split_seed": self.loader.seed,
        }
