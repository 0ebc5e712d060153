"""Training data of the section net: section windows of generated fields, labelled with their true class.

Fields come from the training synth config (`fracscope.synth.load_config`, presets gp and p),
rendered at each source pixel size (default 0.035 / 0.05 / 0.065 / 0.08 µm/px, those of the phase
model's training), imaging drawn per field (`imaging_ranges`); the fields of the second "crack
look" get ``particle.short_crack_fraction`` (half the mild sections with 1-2 short cracks only),
as the tuning fields of ``bench/section_net.py`` (``--generate SEEDs``).

On each field the SHIPPED phase model (`fracscope.phase_map.PhaseMapModel`, ``predict_codes(...).inside``)
gives the phases, exactly as at inference; the sections are the TRUE instance masks (no detector),
judgeable ones only: not touching the field's border and at least ``min_eq_diameter_um`` across.
Each becomes its section window (`fracscope.sections.section_inputs`, the grey level normalised over the
whole field, as at inference) and its true class index.

The windows are cached (float16) under `fracscope.data.datamodule.cache_root` in a folder named by
the hash of everything that determines them, the phase model's graph hash included
(`fracscope.model_file.graph_sha256`: its weights, not the class rule in its metadata). The split is
by field (`split_indices`); training windows get a random quarter turn and flip.
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
from torch.utils.data import DataLoader, Dataset

from fracscope.data.datamodule import LoaderSpec, cache_root, split_indices
from fracscope.model_file import SECTION_TASK
from fracscope.sections import SectionWindow
from fracscope.settings import settings_from_config
from fracscope.synth.config import SynthConfig
from fracscope.types import CLASS_NAMES, AnnotatedImage

SECTION_CACHE_VERSION = 2  # 2: infiltrated fields get the dark-pore contrast of inference


@dataclass(frozen=True)
class SectionSynthSpec:
    """Generated fields for the section net.

    n_fields fields per preset, per source pixel size (µm/px) and per crack look: the preset's own
    cracks, and ``particle.short_crack_fraction=short_crack_fraction`` (0: one look only). Damage
    fractions are the preset's own (None) or `damage`.
    """

    presets: Sequence[str] = ("gp", "p")
    n_fields: int = 4
    source_pixel_sizes_um: Sequence[float] = (0.035, 0.05, 0.065, 0.08)
    field_px: Sequence[int] = (1024, 1024)
    short_crack_fraction: float = 0.5
    damage: Sequence[float] | None = None
    overrides: Sequence[str] = ()
    seed: int = 0
    imaging_ranges: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def looks(self) -> list[tuple[str, ...]]:
        """The synth overrides of each crack look."""
        short = (f"particle.short_crack_fraction={float(self.short_crack_fraction)}",)
        return [()] + ([short] if self.short_crack_fraction > 0 else [])

    def jobs(self) -> list[tuple[str, SynthConfig]]:
        """(preset, generator config) of each field group: preset x crack look x source pixel size."""
        from fracscope.synth import load_config, with_overrides

        ranges = {str(name): (float(a), float(b)) for name, (a, b) in dict(self.imaging_ranges).items()}
        out = []
        for preset in self.presets:
            base = load_config(preset)
            base = replace(base, electrode=replace(base.electrode, field_px=(int(self.field_px[0]), int(self.field_px[1]))))
            if self.damage is not None:
                base = replace(base, damage=tuple(float(d) for d in self.damage))
            if ranges:
                base = replace(base, imaging=replace(base.imaging, randomize={**base.imaging.randomize, **ranges}))
            for look in self.looks():
                cfg = with_overrides(base, [*look, *self.overrides])
                out += [(preset, replace(cfg, electrode=replace(cfg.electrode, pixel_size_um=float(px))))
                        for px in self.source_pixel_sizes_um]
        return out

    def generate(self, workers: int | None = 1) -> Iterator[tuple[str, AnnotatedImage]]:
        """Yield (preset, field) of every field, in order (deterministic in the spec, whatever `workers` is)."""
        from fracscope.child_process import ordered_map
        from fracscope.data.detector_data import _field_job

        groups = self.jobs()
        jobs = [(cfg, int(self.seed) * 1000 + j, i) for j, (_, cfg) in enumerate(groups) for i in range(int(self.n_fields))]
        presets = [p for p, _ in groups for _ in range(int(self.n_fields))]
        # The children only run numpy/scipy (the phase model runs here).
        yield from zip(presets, ordered_map(_field_job, jobs, workers))

    def key_parts(self) -> list:
        """Everything that determines the generated fields (for the cache key)."""
        from fracscope.synth import SYNTH_VERSION

        return [SYNTH_VERSION, int(self.seed), int(self.n_fields), *(cfg.key_dict() for _, cfg in self.jobs())]

    def describe(self) -> str:
        return (f"synthetic fracscope.synth electrode fields (training config), presets {list(self.presets)}, "
                f"{self.n_fields} fields of {list(self.field_px)} px per preset, crack look "
                f"(plain; short_crack_fraction {self.short_crack_fraction}) and each of "
                f"{list(self.source_pixel_sizes_um)} um/px; damage fractions "
                f"{list(self.damage) if self.damage is not None else 'the presets own'}; seed {self.seed}")


@dataclass
class SectionArrays:
    """All sections, N first: x float16 (N, 4, S, S) windows; label int64 class index; field int32 index of
    the source field (the split keeps a field's sections together); pixel_size_um float64; preset str."""

    x: np.ndarray
    label: np.ndarray
    field: np.ndarray
    pixel_size_um: np.ndarray
    preset: np.ndarray

    def __len__(self) -> int:
        return int(len(self.label))

    def subset(self, idx: np.ndarray) -> SectionArrays:
        return SectionArrays(self.x[idx], self.label[idx], self.field[idx], self.pixel_size_um[idx], self.preset[idx])

    def save(self, path: Path) -> None:
        """One ``.npz`` (atomic replace)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, **{k: getattr(self, k) for k in ("x", "label", "field", "pixel_size_um", "preset")})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SectionArrays:
        with np.load(path) as z:
            return cls(z["x"], z["label"], z["field"], z["pixel_size_um"], z["preset"])


def field_sections(item: AnnotatedImage, codes: np.ndarray, window: SectionWindow,
                   min_eq_diameter_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Windows float32 (n, 4, S, S) and class indices of the judgeable sections of one generated field, given
    the phase model's codes (`ImagePhaseCodes.inside`) on its grid."""
    from fracscope.sections import section_inputs

    keep = [a for a in item.particles
            if not a.measurements.get("touches_border", 0) and a.measurements["eq_diameter_um"] >= min_eq_diameter_um]
    x = section_inputs(item.image.pixels, item.instances, codes, [a.particle_id for a in keep], window)
    return x, np.asarray([CLASS_NAMES.index(a.class_name) for a in keep], np.int64)


def generate_sections(synth: SectionSynthSpec, window: SectionWindow, min_eq_diameter_um: float,
                      phase_model: str | None = None, workers: int | None = 1) -> SectionArrays:
    """Every judgeable section of `synth`'s fields (see the module docstring)."""
    from fracscope.data.phase_data import network_pixels
    from fracscope.phase_map import PhaseMapModel

    model = PhaseMapModel(phase_model, threads=1)
    xs, ys, fields, pxs, presets = [], [], [], [], []
    for k, (preset, item) in enumerate(synth.generate(workers)):
        item = replace(item, image=replace(item.image, pixels=network_pixels(item)))
        codes = model.predict_codes(item.image.pixels, float(item.image.pixel_size_um)).inside
        x, y = field_sections(item, codes, window, min_eq_diameter_um)
        xs.append(x.astype(np.float16))
        ys.append(y)
        fields.append(np.full(len(y), k, np.int32))
        pxs.append(np.full(len(y), item.image.pixel_size_um, np.float64))
        presets.append(np.full(len(y), preset))
    size = int(window.size_px)
    return SectionArrays(np.concatenate(xs) if xs else np.zeros((0, 4, size, size), np.float16),
                         np.concatenate(ys) if ys else np.zeros(0, np.int64),
                         np.concatenate(fields) if fields else np.zeros(0, np.int32),
                         np.concatenate(pxs) if pxs else np.zeros(0, np.float64),
                         np.concatenate(presets).astype(str) if presets else np.zeros(0, str))


class SectionDataset(Dataset):
    """Dict samples ``x`` float32 (4, S, S), ``label`` int64; with `augment`, a random quarter turn and flip
    (randomness from torch's global generator, which Lightning seeds and DataLoader workers get apart)."""

    def __init__(self, arrays: SectionArrays, augment: bool) -> None:
        self.arrays = arrays
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.arrays.x[i].astype(np.float32)
        if self.augment:
            k, flip = (int(v) for v in torch.randint(0, 4, (2,)))
            x = np.rot90(x, k, axes=(1, 2))
            if flip % 2:
                x = x[:, :, ::-1]
        return {"x": torch.from_numpy(np.ascontiguousarray(x)),
                "label": torch.tensor(int(self.arrays.label[i]), dtype=torch.int64)}


class SectionDataModule(L.LightningDataModule):
    """Section windows of generated fields for the section net (see the module docstring).

    Parameters
    ----------
    synth : SectionSynthSpec or dict
    window : dict
        `SectionWindow` fields (size_px, margin).
    min_eq_diameter_um : float
        Smallest judgeable section (equivalent diameter, µm), as the class scores judge.
    phase_model : str, optional
        Phase model file whose phases the windows carry; None = the shipped one.
    augment : bool
        Quarter turns and flips of the training windows.
    loader : LoaderSpec or dict
        batch_size (default 64), num_workers, val_fraction, seed (the split is by field).
    workers : int, optional
        Processes that render the fields (None = one per core); the sections do not depend on it.
    """

    KIND = "sections"

    def __init__(
        self,
        synth: SectionSynthSpec | dict | None = None,
        window: SectionWindow | dict | None = None,
        min_eq_diameter_um: float = 3.0,
        phase_model: str | None = None,
        augment: bool = True,
        loader: LoaderSpec | dict | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__()
        self.synth = settings_from_config(SectionSynthSpec, synth, "the data config's synth section")
        self.window = settings_from_config(SectionWindow, window, "the data config's window section")
        self.min_eq_diameter_um = float(min_eq_diameter_um)
        self.phase_model = str(phase_model) if phase_model else None
        self.augment = bool(augment)
        if not isinstance(loader, LoaderSpec):
            loader = settings_from_config(LoaderSpec, {"batch_size": 64, **(loader or {})},
                                          "the data config's loader section")
        self.batch_size = loader.batch_size
        self.num_workers = loader.num_workers
        self.val_fraction = loader.val_fraction
        self.seed = loader.seed
        self.workers = workers
        self.arrays: SectionArrays | None = None
        self.train_idx = self.val_idx = np.zeros(0, int)

    def phase_model_sha256(self) -> str:
        """The phase model's graph hash: its weights decide the windows; its metadata (the class rule) does not."""
        from fracscope.assets import resolve_phase_model
        from fracscope.model_file import graph_sha256

        return graph_sha256(resolve_phase_model(self.phase_model))

    def cache_path(self) -> Path:
        """Where the windows live (hash of the spec, the window, the size floor and the phase model's graph)."""
        parts = [SECTION_CACHE_VERSION, asdict(self.window), self.min_eq_diameter_um, self.phase_model_sha256(),
                 self.synth.key_parts()]
        key = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cache_root() / f"{self.KIND}-{key}" / "sections.npz"

    def _load(self) -> SectionArrays:
        cache = self.cache_path()
        if cache.exists():
            return SectionArrays.load(cache)
        arrays = generate_sections(self.synth, self.window, self.min_eq_diameter_um, self.phase_model, self.workers)
        arrays.save(cache)
        return arrays

    def prepare_data(self) -> None:
        self._load()

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        self.arrays = self._load()
        if not len(self.arrays):
            raise ValueError("the generated fields hold no judgeable section")
        self.train_idx, self.val_idx = split_indices(self.arrays.field, self.val_fraction, self.seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SectionDataset(self.arrays.subset(self.train_idx), self.augment), batch_size=self.batch_size,
                          shuffle=True, num_workers=self.num_workers, drop_last=len(self.train_idx) > self.batch_size,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(SectionDataset(self.arrays.subset(self.val_idx), False), batch_size=self.batch_size,
                          shuffle=False, num_workers=self.num_workers)

    def class_counts(self) -> list[int]:
        """Training sections per class (`CLASS_NAMES` order)."""
        return [int(c) for c in np.bincount(self.arrays.label[self.train_idx], minlength=len(CLASS_NAMES))]

    def class_weights(self) -> list[float]:
        """CE weight per class: the square root of the inverse training frequency (absent classes: 1)."""
        counts = np.asarray(self.class_counts(), float)
        return [float(w) for w in np.sqrt(counts.sum() / np.maximum(counts, 1))]

    def describe(self) -> dict:
        """Plain-typed facts stored in the checkpoint and, at export, in the model file."""
        from fracscope.synth import SYNTH_VERSION

        px = self.arrays.pixel_size_um
        return {
            "task": SECTION_TASK,
            "size_px": int(self.window.size_px),
            "margin": float(self.window.margin),
            "channels": list(self.window.channels),
            "in_channels": len(self.window.channels),
            "class_names": list(CLASS_NAMES),
            "min_eq_diameter_um": self.min_eq_diameter_um,
            "pixel_size_range_um": [float(px.min()), float(px.max())],
            "phase_model_sha256": self.phase_model_sha256(),
            "synth_version": SYNTH_VERSION,
            "class_counts": self.class_counts(),
            "training_data": f"{self.synth.describe()}; true masks of the judgeable sections (>= "
            f"{self.min_eq_diameter_um} um, not at the border), the phase model's phases; {len(self.train_idx)} "
            f"train / {len(self.val_idx)} val sections from {len(np.unique(self.arrays.field))} fields",
            "augment": "quarter turns and flips" if self.augment else "none",
            "split_seed": self.seed,
        }
