"""LightningDataModule over any annotated dataset, or a cached synthetic one.

Every particle is cropped ONCE with `fracscope.crop.crop_particle` (the function
inference uses) into in-memory numpy arrays; the training loop only augments. Without a
dataset path a synthetic set is generated at wide-field pixel sizes (single-particle
crops plus electrode fields), written in the fracscope format under the cache
(``$FRACSCOPE_CACHE`` or ``<repo>/.cache``) in a folder named by the hash of the synth
configs, with the crop arrays beside it as ``.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from scipy import ndimage as ndi
from torch.utils.data import DataLoader, Dataset

from fracscope.crop import CropSpec, crop_particle
from fracscope.data.augment import IGNORE_PHASE, AugmentSpec, CropAugmenter
from fracscope.settings import settings_from_config
from fracscope.synth.config import SynthConfig
from fracscope.types import CLASS_NAMES, PHASE_NAMES, AnnotatedImage, ParticleAnnotation

CROP_CACHE_VERSION = 2  # 2: crack-preserving phase resize (fracscope.crop.resize_phases)
# The network's five stride-2 stages need a crop side that is a multiple of 32.
CROP_SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class ParticleSelection:
    """Which annotated particles become training (or evaluation) crops; not crop geometry.

    min_diameter_px: smaller sections are skipped (slivers).
    skip_border: skip particles cut by the image border (their class is unknowable).
    """

    min_diameter_px: float = 12.0
    skip_border: bool = True


DEFAULT_SELECTION = ParticleSelection()


@dataclass(frozen=True)
class SynthSpec:
    """The synthetic training set generated when no dataset path is given.

    Crops draw their pixel size uniformly from crop_pixel_size_um; electrode fields
    are rendered once per entry of field_pixel_sizes_um, each until
    n_field_particles / len(field_pixel_sizes_um) particles per preset. A share
    bright_fraction of the crops has Pt-filled (bright) pores. workers: processes that
    generate (None = one per CPU core, at most one per generator call); the images do not
    depend on it.
    """

    presets: Sequence[str] = ("gp", "p")
    n_crops: int = 400
    n_field_particles: int = 400
    crop_pixel_size_um: Sequence[float] = (0.03, 0.15)
    field_pixel_sizes_um: Sequence[float] = (0.05, 0.08, 0.12)
    field_px: Sequence[int] = (512, 640)
    damage: Sequence[float] = (0.45, 0.3, 0.25)
    bright_fraction: float = 0.0
    imaging_ranges: Mapping[str, Sequence[float]] = field(default_factory=dict)
    overrides: Sequence[str] = ()
    seed: int = 0
    heldout: bool = False
    workers: int | None = None

    def jobs(self) -> list[tuple[str, SynthConfig, int]]:
        """(kind, generator config, count) for every generator call."""
        from fracscope.synth import load_config, with_overrides

        out = []
        lo, hi = (float(v) for v in self.crop_pixel_size_um)
        for preset in self.presets:
            base = load_config(preset, heldout=self.heldout)
            ranges = {str(name): (float(a), float(b)) for name, (a, b) in dict(self.imaging_ranges).items()}
            common = replace(base, damage=tuple(float(d) for d in self.damage),
                             imaging=replace(base.imaging, randomize={**base.imaging.randomize, **ranges}))
            common = with_overrides(common, self.overrides)  # the user's overrides win over the two above
            crops = replace(common, crops=replace(common.crops, pixel_size_um=(lo, hi)))
            n_bright = int(round(self.n_crops * self.bright_fraction))
            if self.n_crops - n_bright > 0:
                out.append(("crops", crops, self.n_crops - n_bright))
            if n_bright > 0:
                out.append(("crops", replace(crops, imaging=replace(crops.imaging, pore_polarity="bright")), n_bright))
            sizes = list(self.field_pixel_sizes_um)
            if self.n_field_particles > 0 and sizes:
                per = max(1, self.n_field_particles // len(sizes))
                field_px = (int(self.field_px[0]), int(self.field_px[1]))
                for px in sizes:
                    electrode = replace(common.electrode, field_px=field_px, pixel_size_um=float(px))
                    out.append(("electrode", replace(common, electrode=electrode), per))
        return out

    def key(self) -> str:
        """Hash of everything that determines the generated images."""
        from fracscope.synth import SYNTH_VERSION

        parts = [SYNTH_VERSION, self.seed]
        for kind, cfg, n in self.jobs():
            parts.append([kind, n, cfg.key_dict()])
        return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def generate(self) -> Iterator[AnnotatedImage]:
        """Yield every synthetic image (deterministic in the spec, whatever `workers` is).

        Each generator call (preset x kind x field pixel size) is seeded by its index alone,
        so with workers > 1 the calls run in parallel processes and are yielded in order.
        """
        from fracscope.child_process import ordered_map

        calls = [(cfg, kind, n, int(self.seed) * 1000 + j) for j, (kind, cfg, n) in enumerate(self.jobs())]
        for items in ordered_map(_synth_call, calls, self.workers):
            yield from items

    def describe(self) -> str:
        return (
            f"synthetic fracscope.synth presets {list(self.presets)}: {self.n_crops} single-particle crops per preset "
            f"at {list(self.crop_pixel_size_um)} um/px and electrode fields with >= {self.n_field_particles} "
            f"particles per preset at {list(self.field_pixel_sizes_um)} um/px; damage fractions {list(self.damage)}; "
            f"bright-pore crops {self.bright_fraction:.0%}; "
            + (f"imaging drawn per image from {dict(sorted(dict(self.imaging_ranges).items()))}; " if self.imaging_ranges else "")
            + f"seed {self.seed}"
            + (" (held-out config)" if self.heldout else "")
        )


def _synth_call(call) -> list[AnnotatedImage]:
    """One generator call of `SynthSpec.generate`: (generator config, kind, count, seed)."""
    from fracscope.synth import generate_crops, generate_electrode

    cfg, kind, n, seed = call
    if kind == "crops":
        return list(generate_crops(cfg, n, seed))
    return list(generate_electrode(cfg, n, seed, workers=1))


def cache_root() -> Path:
    """``$FRACSCOPE_CACHE``, else ``<repo>/.cache/fracscope`` (repo = where src/ lives)."""
    env = os.environ.get("FRACSCOPE_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").exists():
        return repo / ".cache" / "fracscope"
    return Path.home() / ".cache" / "fracscope"


@dataclass
class CropArrays:
    """All crops of a dataset as arrays (N first).

    image float16 (N, S, S) normalised; mask uint8 own mask; phases uint8 (255 =
    unknown); label int64 (-1 = unknown); pixel_size_um float32 of the source image
    (NaN unknown); crop_pixel_size_um float32 (source pixel size / scale); group int32,
    the index of the source image (splits keep an image's particles together).
    """

    image: np.ndarray
    mask: np.ndarray
    phases: np.ndarray
    label: np.ndarray
    pixel_size_um: np.ndarray
    crop_pixel_size_um: np.ndarray
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, idx: np.ndarray) -> CropArrays:
        return CropArrays(**{k: v[idx] for k, v in asdict_shallow(self).items()})

    def save(self, path: Path) -> None:
        """Write atomically (parallel DDP ranks may race on the same cache file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, **asdict_shallow(self))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> CropArrays:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in z.files})


def asdict_shallow(arrays: CropArrays) -> dict[str, np.ndarray]:
    return {k: getattr(arrays, k) for k in arrays.__dataclass_fields__}


def _detected_instances(item: AnnotatedImage, detector) -> np.ndarray:
    """Instance map for an image without one: the classical detector's particle nearest the
    centre becomes particle 1 (class-folder crops hold one particle each)."""
    if detector is None:
        from fracscope.detect.classical import ClassicalDetector

        detector = ClassicalDetector()
    labels = np.asarray(detector.detect(item.image))
    h, w = labels.shape
    out = np.zeros((h, w), np.uint32)
    if labels.max() == 0:
        out[:] = 1  # nothing found: the whole crop stands for the particle
        return out
    ids = np.unique(labels[labels > 0])
    centres = ndi.center_of_mass(np.ones_like(labels), labels, ids)
    d = [np.hypot(r - h / 2, c - w / 2) for r, c in centres]
    out[labels == ids[int(np.argmin(d))]] = 1
    return out


def croppable_particles(
    items: Sequence[AnnotatedImage], select: ParticleSelection = DEFAULT_SELECTION, detector=None
) -> Iterator[tuple[int, AnnotatedImage, np.ndarray, ParticleAnnotation, tuple[slice, slice]]]:
    """(image index, image, instance map, particle, bounding box) of every particle that
    `crops_from_items` crops, in its order.

    Images without instance masks get them from `detector` (default classical); particles
    cut by the border (when `select.skip_border`) or smaller than `select.min_diameter_px` are
    skipped.
    """
    for g, item in enumerate(items):
        inst = item.instances
        particles = item.particles
        if inst is None:
            inst = _detected_instances(item, detector)
            particles = particles[:1] or []
            if particles:
                particles = [type(particles[0])(1, particles[0].class_name, dict(particles[0].measurements))]
        boxes = ndi.find_objects(np.asarray(inst))
        h, w = inst.shape
        for p in particles:
            pid = int(p.particle_id)
            box = boxes[pid - 1] if 0 < pid <= len(boxes) else None
            if box is None:
                continue
            if select.skip_border and item.instances is not None and len(particles) > 1:
                if box[0].start == 0 or box[1].start == 0 or box[0].stop == h or box[1].stop == w:
                    continue
            area = int(np.count_nonzero(inst[box] == pid))
            if 2.0 * np.sqrt(area / np.pi) < select.min_diameter_px:
                continue
            yield g, item, inst, p, box


def crops_from_items(items: Sequence[AnnotatedImage], spec: CropSpec, detector=None,
                     select: ParticleSelection = DEFAULT_SELECTION) -> CropArrays:
    """Crop every annotated particle of every image with the shared crop function and `spec`.

    Which particles: `croppable_particles` with `select`. Images without phase maps give phases = 255
    (the phase loss ignores them).
    """
    s = spec.size
    images, masks, phases, labels, pxs, cpxs, groups = [], [], [], [], [], [], []
    for g, item, inst, p, box in croppable_particles(items, select, detector):
        pid = int(p.particle_id)
        px = item.image.pixel_size_um
        crop = crop_particle(item.image.pixels, inst, pid, spec, item.phases, bbox=box)
        images.append(crop.image.astype(np.float16))
        masks.append(crop.mask.astype(np.uint8))
        phases.append(crop.phases if crop.phases is not None else np.full((s, s), IGNORE_PHASE, np.uint8))
        labels.append(CLASS_NAMES.index(p.class_name) if p.class_name in CLASS_NAMES else -1)
        pxs.append(np.nan if px is None else float(px))
        cpxs.append(np.nan if px is None else float(px) / crop.scale)
        groups.append(g)
    if not images:
        raise ValueError("the dataset holds no particle that could be cropped")
    return CropArrays(
        image=np.stack(images),
        mask=np.stack(masks),
        phases=np.stack(phases),
        label=np.asarray(labels, np.int64),
        pixel_size_um=np.asarray(pxs, np.float32),
        crop_pixel_size_um=np.asarray(cpxs, np.float32),
        group=np.asarray(groups, np.int32),
    )


def split_indices(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/val split by source image; by particle when there are < 5 images."""
    n = len(groups)
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    if val_fraction <= 0 or n < 2:
        return np.arange(n), np.arange(n)
    if len(uniq) >= 5:
        val_groups = rng.permutation(uniq)[: max(1, int(round(val_fraction * len(uniq))))]
        val = np.isin(groups, val_groups)
    else:
        val = np.zeros(n, bool)
        val[rng.permutation(n)[: max(1, int(round(val_fraction * n)))]] = True
    if val.all():
        val[rng.integers(n)] = False
    return np.flatnonzero(~val), np.flatnonzero(val)


class ParticleDataset(Dataset):
    """Dict samples: x (2, S, S) float32 image + input mask; mask, phases, label targets."""

    def __init__(self, arrays: CropArrays, augmenter: CropAugmenter | None = None) -> None:
        self.arrays = arrays
        self.augmenter = augmenter

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a = self.arrays
        image = a.image[i].astype(np.float32)
        mask = a.mask[i]
        phases = a.phases[i]
        in_mask = mask
        if self.augmenter is not None:
            image, in_mask, mask, phases = self.augmenter(image, mask, phases)
        x = np.stack([image, in_mask.astype(np.float32)])
        return {
            "x": torch.from_numpy(np.ascontiguousarray(x)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8)),
            "phases": torch.from_numpy(np.ascontiguousarray(phases).astype(np.int64)),
            "label": torch.tensor(int(a.label[i]), dtype=torch.int64),
        }


@dataclass(frozen=True)
class LoaderSpec:
    """Batches and the train/validation split (seeded, by source image)."""

    batch_size: int = 32
    num_workers: int = 0
    val_fraction: float = 0.2
    seed: int = 0


class ParticleDataModule(L.LightningDataModule):
    """Crops of an annotated dataset (`path`, any `read_dataset` format) or of a synthetic set.

    Parameters
    ----------
    path : str, optional
        Dataset folder or COCO json; None for the cached synthetic set.
    format : str
        `read_dataset` format ("auto" detects it).
    crop, select, synth, augment, loader : CropSpec, ParticleSelection, SynthSpec, AugmentSpec, LoaderSpec or dict
        A dict (the Hydra config's section) is read with `fracscope.settings.settings_from_config`:
        an unknown key fails.
    """

    def __init__(
        self,
        path: str | None = None,
        format: str = "auto",
        crop: CropSpec | dict | None = None,
        select: ParticleSelection | dict | None = None,
        synth: SynthSpec | dict | None = None,
        augment: AugmentSpec | dict | None = None,
        loader: LoaderSpec | dict | None = None,
    ) -> None:
        super().__init__()
        self.path = str(path) if path else None
        self.format = format
        self.crop = settings_from_config(CropSpec, crop, "the data config's crop section")
        if self.crop.size % CROP_SIZE_MULTIPLE:
            raise ValueError(f"crop size must be a positive multiple of {CROP_SIZE_MULTIPLE}, got {self.crop.size}")
        self.select = settings_from_config(ParticleSelection, select, "the data config's select section")
        self.synth = settings_from_config(SynthSpec, synth, "the data config's synth section")
        self.augment = settings_from_config(AugmentSpec, augment, "the data config's augment section")
        lo = settings_from_config(LoaderSpec, loader, "the data config's loader section")
        self.batch_size = lo.batch_size
        self.num_workers = lo.num_workers
        self.val_fraction = lo.val_fraction
        self.seed = lo.seed
        self.arrays: CropArrays | None = None
        self.train_idx = self.val_idx = np.zeros(0, int)

    # -------------------------------------------------------------- data
    def synth_dir(self) -> Path:
        return cache_root() / f"synth-{self.synth.key()}"

    def _crop_cache_path(self, root: Path) -> Path:
        k = json.dumps([CROP_CACHE_VERSION, asdict(self.crop), asdict(self.select)], sort_keys=True)
        return root / f"crops-{hashlib.sha1(k.encode()).hexdigest()[:12]}.npz"

    def _load_synth(self) -> CropArrays:
        root = self.synth_dir()
        cache = self._crop_cache_path(root)
        if cache.exists():
            return CropArrays.load(cache)
        from fracscope.data import read_dataset, write_dataset

        if (root / "annotations.json").exists():
            items = read_dataset(root, format="fracscope")
        else:
            items = list(self.synth.generate())
            tmp = Path(tempfile.mkdtemp(dir=root.parent if root.parent.exists() else None, prefix="tmp-synth-"))
            write_dataset(tmp, items, dataset_meta={"description": self.synth.describe()})
            try:
                os.replace(tmp, root)
            except OSError:  # another rank got there first
                pass
        arrays = crops_from_items(items, self.crop, select=self.select)
        arrays.save(cache)
        return arrays

    def prepare_data(self) -> None:
        if self.path is None:
            cache_root().mkdir(parents=True, exist_ok=True)
            self._load_synth()

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        if self.path is None:
            cache_root().mkdir(parents=True, exist_ok=True)
            self.arrays = self._load_synth()
        else:
            from fracscope.data import read_dataset

            self.arrays = crops_from_items(read_dataset(self.path, format=self.format), self.crop, select=self.select)
        self.train_idx, self.val_idx = split_indices(self.arrays.group, self.val_fraction, self.seed)

    # -------------------------------------------------------------- loaders
    def train_dataset(self) -> ParticleDataset:
        aug = CropAugmenter(self.augment, seed=self.seed) if self.augment.enabled else None
        return ParticleDataset(self.arrays.subset(self.train_idx), aug)

    def val_dataset(self) -> ParticleDataset:
        return ParticleDataset(self.arrays.subset(self.val_idx), None)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_dataset(), batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
            drop_last=len(self.train_idx) > self.batch_size, persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # -------------------------------------------------------------- facts
    def class_weights(self) -> list[float]:
        """Inverse-frequency CE weights over the training labels (mean 1; unseen classes 0)."""
        labels = self.arrays.label[self.train_idx]
        counts = np.bincount(labels[labels >= 0], minlength=len(CLASS_NAMES)).astype(float)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(CLASS_NAMES), 0.0)
        return [float(v) for v in w / max(w[w > 0].mean(), 1e-9)]

    def describe(self) -> dict:
        """Plain-typed facts stored in the checkpoint for export and inference."""
        a = self.arrays
        px = a.pixel_size_um[np.isfinite(a.pixel_size_um)]
        cpx = a.crop_pixel_size_um[np.isfinite(a.crop_pixel_size_um)]
        polarities = list(self.augment.pore_polarities)
        if self.path is None and self.synth.bright_fraction > 0 and "bright" not in polarities:
            polarities.append("bright")
        synth_version = None
        if self.path is None:
            from fracscope.synth import SYNTH_VERSION

            synth_version = SYNTH_VERSION
        counts = np.bincount(a.label[a.label >= 0], minlength=len(CLASS_NAMES))
        return {
            **self.crop.to_fields(),  # crop_size, margin, normalisation: ModelMetadata reads these
            "in_channels": 2,
            "class_names": list(CLASS_NAMES),
            "phase_names": list(PHASE_NAMES),
            "pixel_size_range_um": [float(px.min()), float(px.max())] if px.size else None,
            "crop_pixel_size_range_um": [float(cpx.min()), float(cpx.max())] if cpx.size else None,
            "pore_polarities": polarities,
            "synth_version": synth_version,
            "training_data": (self.synth.describe() if self.path is None else f"dataset {self.path} ({self.format})")
            + f"; {len(self.train_idx)} train / {len(self.val_idx)} val crops; class counts "
            + ", ".join(f"{n}={int(c)}" for n, c in zip(CLASS_NAMES, counts)),
            "has_phases": bool((a.phases != IGNORE_PHASE).any()),
            "augment": asdict(self.augment),
            "split_seed": self.seed,
        }
