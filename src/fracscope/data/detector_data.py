"""Training data of the learned particle detector: whole fields at the working pixel size.

Each source image (a synthetic electrode field, or an annotated image of a user
dataset) is resampled ONCE to the detector's working pixel size (default 0.15 µm/px)
with `fracscope.detect.learned.to_working_scale` (the function inference uses),
normalised by percentiles over the whole resampled field, and its instance map is
resampled by nearest neighbour; the targets (foreground, per-instance normalised
distance) come from `fracscope.detect.maps_from_labels` on that whole resampled map,
so a particle cut by a training tile keeps the distances of the whole particle. A
broken particle with its fragments is one instance (the generator and the dataset
formats already say so).

Training draws random tiles (default 256 px at working scale, fields chosen in
proportion to their area) with flips, 90° rotations, brightness/contrast, gamma,
blur and Gaussian noise; validation uses a fixed grid of tiles over held-back fields.
Synthetic fields are cached under `fracscope.data.datamodule.cache_root` in a folder
named by the hash of everything that determines them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from scipy import ndimage as ndi
from torch.utils.data import DataLoader, Dataset

from fracscope.crop import NORM_PERCENTILES
from fracscope.data.datamodule import LoaderSpec, cache_root, split_indices
from fracscope.detect.learned import normalise_image, resize_nearest, to_working_scale, working_shape
from fracscope.model_file import DEFAULT_WORKING_PIXEL_SIZE_UM
from fracscope.detect.postprocess import maps_from_labels
from fracscope.settings import settings_from_config
from fracscope.synth.config import SynthConfig
from fracscope.types import AnnotatedImage

FIELD_CACHE_VERSION = 1


@dataclass(frozen=True)
class FieldSynthSpec:
    """Synthetic electrode fields for the detector.

    n_fields fields are rendered per preset and per source pixel size (µm/px), each
    field_px (rows, cols) at its source pixel size, then resampled to the working scale.
    """

    presets: Sequence[str] = ("gp", "p")
    n_fields: int = 12
    source_pixel_sizes_um: Sequence[float] = (0.05, 0.08, 0.12)
    field_px: Sequence[int] = (1024, 1024)
    damage: Sequence[float] = (0.45, 0.3, 0.25)
    overrides: Sequence[str] = ()
    seed: int = 0
    heldout: bool = False
    # Domain randomisation: each field draws these imaging parameters uniformly ({} = the preset's fixed look).
    imaging_ranges: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def jobs(self) -> list[SynthConfig]:
        """The generator config of each field group (preset x source pixel size)."""
        from fracscope.synth import load_config, with_overrides

        out = []
        ranges = {str(name): (float(a), float(b)) for name, (a, b) in dict(self.imaging_ranges).items()}
        for preset in self.presets:
            base = load_config(preset, heldout=self.heldout)
            electrode = replace(base.electrode, field_px=(int(self.field_px[0]), int(self.field_px[1])))
            base = replace(base, damage=tuple(float(d) for d in self.damage), electrode=electrode)
            if ranges:
                base = replace(base, imaging=replace(base.imaging, randomize={**base.imaging.randomize, **ranges}))
            base = with_overrides(base, self.overrides)  # the user's overrides win over the two above
            out += [replace(base, electrode=replace(base.electrode, pixel_size_um=float(px)))
                    for px in self.source_pixel_sizes_um]
        return out

    def pore_polarities(self) -> list[str]:
        """Pore appearances the fields show: "bright" too when any field group renders pores filled
        (the infiltrated look, or bright pores), recorded in a phase model's file (informational:
        bright-pore images reach the networks in dark-pore contrast, `fracscope.polarity`)."""
        bright = any(
            cfg.imaging.pore_polarity == "bright" or "infiltrated" in cfg.imaging.looks
            or float(cfg.imaging.looks_p.get("infiltrated", 0.0)) > 0
            for cfg in self.jobs()
        )
        return ["dark", "bright"] if bright else ["dark"]

    def generate(self, workers: int | None = 1) -> Iterator[AnnotatedImage]:
        """Yield every field, in order (deterministic in the spec, whatever `workers` is).

        workers: generator processes (None = one per core).
        """
        from fracscope.child_process import ordered_map

        jobs = [(cfg, int(self.seed) * 1000 + j, i) for j, cfg in enumerate(self.jobs()) for i in range(int(self.n_fields))]
        yield from ordered_map(_field_job, jobs, workers)

    def key_parts(self) -> list:
        """Everything that determines the generated images (for the cache key)."""
        from fracscope.synth import SYNTH_VERSION

        return [SYNTH_VERSION, int(self.seed), int(self.n_fields), *(cfg.key_dict() for cfg in self.jobs())]

    def describe(self) -> str:
        return (
            f"synthetic fracscope.synth electrode fields, presets {list(self.presets)}, {self.n_fields} fields "
            f"of {list(self.field_px)} px per preset at each of {list(self.source_pixel_sizes_um)} um/px; "
            f"damage fractions {list(self.damage)}; seed {self.seed}" + (" (held-out config)" if self.heldout else "")
        )


def _field_job(job: tuple) -> AnnotatedImage:
    from fracscope.synth import make_field

    cfg, seed, index = job
    return make_field(cfg, seed, index)


@dataclass(frozen=True)
class TileAugmentSpec:
    """Tile augmentation (probabilities per tile); geometry moves image and targets together."""

    enabled: bool = True
    flip_rot: bool = True
    brightness_contrast_p: float = 0.6
    brightness: float = 0.1
    contrast: float = 0.25
    gamma_p: float = 0.3
    gamma: float = 0.25
    blur_p: float = 0.25
    blur_px: float = 1.0
    noise_p: float = 0.5
    noise_sd: float = 0.05


@dataclass
class Field:
    """One source image at working scale.

    image: float16 (H, W) normalised to [0, 1]; instances: int32 labels; foreground:
    uint8 {0, 1}; distance: float16 in [0, 1]; pixel_size_um: the source pixel size.
    """

    image: np.ndarray
    instances: np.ndarray
    foreground: np.ndarray
    distance: np.ndarray
    pixel_size_um: float

    @property
    def area(self) -> int:
        return int(self.image.size)


def prepare_field(item: AnnotatedImage, working_pixel_size_um: float, pixel_size_um: float | None = None) -> Field:
    """Resample, normalise and build targets of one annotated image (see module docstring).

    Raises
    ------
    ValueError
        When the image has no instance map, or no pixel size and none is given.
    """
    if item.instances is None:
        raise ValueError(f"{item.stem}: the detector needs instance masks")
    px = pixel_size_um or item.image.pixel_size_um
    if px is None or not px > 0:
        raise ValueError(f"{item.stem}: no pixel size; give data.assume_pixel_size_um")
    scale = float(px) / float(working_pixel_size_um)
    image = normalise_image(to_working_scale(item.image.pixels, scale), NORM_PERCENTILES)
    shape = working_shape(np.shape(item.image.pixels), scale)
    instances = resize_nearest(np.asarray(item.instances), shape).astype(np.int32)
    fg, dist = maps_from_labels(instances)
    return Field(image.astype(np.float16), instances, fg.astype(np.uint8), dist.astype(np.float16), float(px))


def save_fields(path: Path, fields: Sequence[Field]) -> None:
    """All fields in one ``.npz`` (atomic replace; keys ``<name>_<i>``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"pixel_size_um": np.asarray([f.pixel_size_um for f in fields], np.float32)}
    for i, f in enumerate(fields):
        for name in ("image", "instances", "foreground", "distance"):
            arrays[f"{name}_{i}"] = getattr(f, name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_fields(path: Path) -> list[Field]:
    """Read `save_fields` output."""
    with np.load(path) as z:
        px = z["pixel_size_um"]
        return [
            Field(z[f"image_{i}"], z[f"instances_{i}"], z[f"foreground_{i}"], z[f"distance_{i}"], float(px[i]))
            for i in range(len(px))
        ]


def _pad_to(a: np.ndarray, tile: int, value: float = 0) -> np.ndarray:
    ph, pw = max(0, tile - a.shape[0]), max(0, tile - a.shape[1])
    if ph == 0 and pw == 0:
        return a
    return np.pad(a, ((0, ph), (0, pw)), constant_values=value)


def _sample(field: Field, r: int, c: int, tile: int) -> dict[str, np.ndarray]:
    sl = (slice(r, r + tile), slice(c, c + tile))
    return {
        "image": _pad_to(field.image[sl].astype(np.float32), tile),
        "foreground": _pad_to(field.foreground[sl].astype(np.float32), tile),
        "distance": _pad_to(field.distance[sl].astype(np.float32), tile),
        "instances": _pad_to(field.instances[sl], tile),
    }


def augment_tile(
    sample: dict[str, np.ndarray], spec: TileAugmentSpec, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random flips / rot90 on every map, intensity changes on the image only."""
    out = dict(sample)
    if spec.flip_rot:
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        for name, a in out.items():
            a = np.rot90(a, k)
            out[name] = np.ascontiguousarray(a[:, ::-1] if flip else a)
    img = out["image"]
    if rng.random() < spec.brightness_contrast_p:
        c = 1.0 + rng.uniform(-spec.contrast, spec.contrast)
        b = rng.uniform(-spec.brightness, spec.brightness)
        img = (img - 0.5) * c + 0.5 + b
    if rng.random() < spec.gamma_p:
        img = np.clip(img, 0.0, 1.0) ** np.exp(rng.uniform(-spec.gamma, spec.gamma))
    if rng.random() < spec.blur_p:
        img = ndi.gaussian_filter(img, rng.uniform(0.3, spec.blur_px))
    if rng.random() < spec.noise_p:
        img = img + rng.normal(0.0, rng.uniform(0.0, spec.noise_sd), img.shape)
    out["image"] = np.clip(img, 0.0, 1.0).astype(np.float32)
    return out


def _as_batch(sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        "x": torch.from_numpy(np.ascontiguousarray(sample["image"][None], dtype=np.float32)),
        "foreground": torch.from_numpy(np.ascontiguousarray(sample["foreground"], dtype=np.float32)),
        "distance": torch.from_numpy(np.ascontiguousarray(sample["distance"], dtype=np.float32)),
        "instances": torch.from_numpy(np.ascontiguousarray(sample["instances"], dtype=np.int32)),
    }


class RandomTiles(Dataset):
    """`length` random tiles per epoch from `fields` (field chosen in proportion to its area).

    Randomness comes from torch's global generator, which Lightning seeds, which
    advances between epochs and which DataLoader workers get seeded apart. `sample`
    cuts a tile's arrays from a field and `as_batch` makes them tensors (the detector's
    by default; the phase model's data passes its own).
    """

    def __init__(self, fields: Sequence, tile_px: int, length: int, augment: TileAugmentSpec | None,
                 sample=None, as_batch=None) -> None:
        if not fields:
            raise ValueError("no training fields")
        self.fields = list(fields)
        self.tile_px = int(tile_px)
        self.length = int(length)
        self.augment = augment
        self.sample = sample or _sample
        self.as_batch = as_batch or _as_batch
        areas = np.asarray([f.area for f in self.fields], float)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        field = self.fields[int(rng.choice(len(self.fields), p=self.weights))]
        h, w = field.image.shape
        r = int(rng.integers(0, max(h - self.tile_px, 0) + 1))
        c = int(rng.integers(0, max(w - self.tile_px, 0) + 1))
        sample = self.sample(field, r, c, self.tile_px)
        if self.augment is not None and self.augment.enabled:
            sample = augment_tile(sample, self.augment, rng)
        return self.as_batch(sample)


class GridTiles(Dataset):
    """A fixed grid of tiles over `fields` (validation), at most `max_tiles`; `sample`, `as_batch` as `RandomTiles`."""

    def __init__(self, fields: Sequence, tile_px: int, max_tiles: int | None = None, sample=None,
                 as_batch=None) -> None:
        self.fields = list(fields)
        self.tile_px = int(tile_px)
        self.sample = sample or _sample
        self.as_batch = as_batch or _as_batch
        spots = []
        for k, f in enumerate(self.fields):
            h, w = f.image.shape
            rows = np.unique(np.linspace(0, max(h - tile_px, 0), max(1, round(h / tile_px))).astype(int))
            cols = np.unique(np.linspace(0, max(w - tile_px, 0), max(1, round(w / tile_px))).astype(int))
            spots += [(k, int(r), int(c)) for r in rows for c in cols]
        self.spots = spots[: max_tiles] if max_tiles else spots

    def __len__(self) -> int:
        return len(self.spots)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, r, c = self.spots[i]
        return self.as_batch(self.sample(self.fields[k], r, c, self.tile_px))


class FieldDataModule(L.LightningDataModule):
    """Whole fields at a network's working pixel size, cut into random training tiles and a validation grid.

    The one data module behind the dense networks (the detector, `DetectorDataModule`, and the phase model,
    `fracscope.data.phase_data.PhaseDataModule`): cached synthetic electrode fields, or a user dataset. A
    subclass says how one annotated image becomes a field (`prepare`), how fields are stored (`save`,
    `load`), how a tile is cut and batched (`sample`, `as_batch`) and what the checkpoint records (`describe`).

    Parameters
    ----------
    path : str, optional
        Dataset folder / COCO json readable by `fracscope.data.read_dataset`; None for the synthetic
        fields of `synth`.
    format : str
        `read_dataset` format ("auto" detects it).
    working_pixel_size_um : float
        Pixel size the network works at.
    assume_pixel_size_um : float, optional
        Pixel size of dataset images that carry none.
    tile_px : int
        Training / validation tile side at working scale (multiple of 32).
    tiles_per_epoch : int
        Random training tiles per epoch.
    max_val_tiles : int, optional
        Cap on the validation grid.
    synth, augment : FieldSynthSpec, TileAugmentSpec or dict
    loader : LoaderSpec or dict
        batch_size (default 8), num_workers, val_fraction, seed.
    workers : int, optional
        Processes that generate the synthetic fields (None = one per core); the fields do not depend on it.
    """

    KIND = "fields"  # names the cache folder and the messages
    CACHE_VERSION = 1
    DEFAULT_WORKING_PIXEL_SIZE_UM = DEFAULT_WORKING_PIXEL_SIZE_UM

    def __init__(
        self,
        path: str | None = None,
        format: str = "auto",
        working_pixel_size_um: float | None = None,
        assume_pixel_size_um: float | None = None,
        tile_px: int = 256,
        tiles_per_epoch: int = 512,
        max_val_tiles: int | None = 128,
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
        self.working_pixel_size_um = float(working_pixel_size_um or self.DEFAULT_WORKING_PIXEL_SIZE_UM)
        self.assume_pixel_size_um = assume_pixel_size_um
        self.tile_px = int(tile_px)
        self.tiles_per_epoch = int(tiles_per_epoch)
        self.max_val_tiles = int(max_val_tiles) if max_val_tiles else None
        self.workers = workers
        self.synth = settings_from_config(FieldSynthSpec, synth, "the data config's synth section")
        self.augment = settings_from_config(TileAugmentSpec, augment, "the data config's augment section")
        if not isinstance(loader, LoaderSpec):  # the dense networks' own default batch
            loader = settings_from_config(LoaderSpec, {"batch_size": 8, **(loader or {})}, "the data config's loader section")
        self.batch_size = loader.batch_size
        self.num_workers = loader.num_workers
        self.val_fraction = loader.val_fraction
        self.seed = loader.seed
        self.fields: list | None = None
        self.train_idx = self.val_idx = np.zeros(0, int)

    # -------------------------------------------------------------- what a subclass says
    def prepare(self, item: AnnotatedImage, pixel_size_um: float | None) -> Any:
        raise NotImplementedError

    @staticmethod
    def save(path: Path, fields: Sequence) -> None:
        raise NotImplementedError

    @staticmethod
    def load(path: Path) -> list:
        raise NotImplementedError

    @staticmethod
    def sample(field: Any, r: int, c: int, tile: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def as_batch(sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -------------------------------------------------------------- data
    def cache_path(self) -> Path:
        """Where the prepared synthetic fields live (hash of the spec and the working scale)."""
        parts = [self.CACHE_VERSION, self.working_pixel_size_um, list(NORM_PERCENTILES), self.synth.key_parts()]
        key = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cache_root() / f"{self.KIND}-{key}" / "fields.npz"

    def _load(self) -> list:
        if self.path is not None:
            from fracscope.data import read_dataset

            items = read_dataset(self.path, format=self.format)
            return [self.prepare(it, self.assume_pixel_size_um) for it in items]
        cache = self.cache_path()
        if cache.exists():
            return self.load(cache)
        fields = [self.prepare(it, None) for it in self.synth.generate(self.workers)]
        self.save(cache, fields)
        return fields

    def prepare_data(self) -> None:
        if self.path is None:
            self._load()

    def setup(self, stage: str | None = None) -> None:
        if self.fields is not None:
            return
        self.fields = self._load()
        if not self.fields:
            raise ValueError(f"the {self.KIND} dataset holds no image")
        self.train_idx, self.val_idx = split_indices(np.arange(len(self.fields)), self.val_fraction, self.seed)

    # -------------------------------------------------------------- loaders
    def train_dataset(self) -> RandomTiles:
        return RandomTiles([self.fields[i] for i in self.train_idx], self.tile_px, self.tiles_per_epoch, self.augment,
                           self.sample, self.as_batch)

    def val_dataset(self) -> GridTiles:
        return GridTiles([self.fields[i] for i in self.val_idx], self.tile_px, self.max_val_tiles, self.sample,
                         self.as_batch)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset(), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          drop_last=self.tiles_per_epoch > self.batch_size, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def class_weights(self) -> None:
        """No classes here (`fracscope.models.train.run` asks every data module)."""
        return None


class DetectorDataModule(FieldDataModule):
    """Fields for the learned detector (`FieldDataModule`; default working pixel size 0.15 µm/px): instance
    maps resampled by nearest neighbour, foreground and per-instance distance targets."""

    KIND = "detector"
    CACHE_VERSION = FIELD_CACHE_VERSION

    def prepare(self, item: AnnotatedImage, pixel_size_um: float | None) -> Field:
        return prepare_field(item, self.working_pixel_size_um, pixel_size_um)

    save = staticmethod(save_fields)
    load = staticmethod(load_fields)
    sample = staticmethod(_sample)
    as_batch = staticmethod(_as_batch)

    # -------------------------------------------------------------- facts
    def describe(self) -> dict:
        """Plain-typed facts stored in the checkpoint and, at export, in the model file."""
        from fracscope.synth import SYNTH_VERSION

        px = np.asarray([f.pixel_size_um for f in self.fields], float)
        n_inst = sum(int(len(np.unique(f.instances)) - 1) for f in self.fields)
        source = self.synth.describe() if self.path is None else f"dataset {self.path} ({self.format})"
        return {
            "task": "particle_detector",
            "working_pixel_size_um": self.working_pixel_size_um,
            "tile_px": self.tile_px,
            "in_channels": 1,
            "normalisation": {"method": "percentile", "low_pct": NORM_PERCENTILES[0], "high_pct": NORM_PERCENTILES[1],
                              "over": "whole image at working scale (fracscope.detect.learned.normalise_image)"},
            "pixel_size_range_um": [float(px.min()), float(px.max())],
            "synth_version": SYNTH_VERSION if self.path is None else None,
            "training_data": f"{source}; resampled to {self.working_pixel_size_um} um/px; "
            f"{len(self.train_idx)} train / "
            f"{len(self.val_idx)} val images, {n_inst} instances",
            "augment": asdict(self.augment),
            "split_seed": self.seed,
        }
