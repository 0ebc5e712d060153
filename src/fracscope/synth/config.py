"""The synthetic-data config: typed, read from `conf/synth` once.

`load_config` reads conf/synth/config.yaml (or the frozen heldout.yaml) with a preset
into a `SynthConfig`; code that needs another set changes it with `dataclasses.replace`
(the data module does), the CLI and scripts with Hydra-style override strings. The values
live in the YAML files only: the dataclasses below have no defaults of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fracscope import assets
from fracscope.settings import SettingsError, settings_from_config
from fracscope.synth.imaging import LOOK_FIELDS, ImagingConfig

CONF_DIR: Path = assets.CONF_DIR / "synth"


@dataclass(frozen=True)
class PorosityConfig:
    """Pore content of a preset (`fracscope.synth.pores.PoreModel`)."""

    center_pct: float
    edge_pct: float
    diameter_um: tuple[float, float]
    core_size_boost: float


@dataclass(frozen=True)
class PresetConfig:
    """A material preset (conf/synth/preset/*.yaml)."""

    name: str
    porosity: PorosityConfig


@dataclass(frozen=True)
class ParticleConfig:
    """Secondary-particle geometry (conf/synth/config.yaml documents each value)."""

    d50_um: float
    d_log_sd: float
    d_range_um: tuple[float, float]
    grain_width_um: tuple[float, float]
    grain_aspect: tuple[float, float]
    outline_roughness: float
    crack_width_um: tuple[float, float]
    crack_branches: tuple[int, int]
    crack_min_width_px: float
    short_crack_fraction: float
    short_crack_length_um: tuple[float, float]
    short_crack_width_um: tuple[float, float]


@dataclass(frozen=True)
class CropsConfig:
    """Single-particle crops (kind=crops)."""

    pixel_size_um: tuple[float, float]
    max_offset_frac: float
    margin_frac: float


@dataclass(frozen=True)
class ElectrodeConfig:
    """Electrode wide fields (kind=electrode)."""

    pixel_size_um: float
    field_px: tuple[int, int]
    area_fraction: float
    fines_fraction: float
    fines_d_range_um: tuple[float, float]
    min_visible_px: int
    contact_overlap: float
    packed_field_um: float


@dataclass(frozen=True)
class SynthConfig:
    """The generator's whole config (conf/synth/config.yaml); fields in the YAML's order.

    The generators read preset, damage, particle, crops, electrode and imaging; kind, n,
    seed, output, workers and preview are the CLI's (`python -m fracscope.synth`).
    """

    preset: PresetConfig
    kind: str
    n: int
    seed: int
    output: str
    workers: int
    preview: int
    damage: tuple[float, float, float]  # fractions intact, mildly_damaged, broken
    particle: ParticleConfig
    crops: CropsConfig
    electrode: ElectrodeConfig
    imaging: ImagingConfig

    @classmethod
    def from_config(cls, cfg: Any) -> SynthConfig:
        """From a composed config (the CLI's DictConfig or nested dicts); unknown keys fail."""
        return settings_from_config(cls, cfg, "the synth config")

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists (for dataset metadata)."""
        return _lists(asdict(self))

    def key_dict(self) -> dict[str, Any]:
        """`to_dict` for cache keys: while no look can be on (`imaging.looks` empty, every
        `looks_p` 0) and none of their parameters is drawn, the look parameters change no
        pixel and are left out, as are `electrode.contact_overlap` and `electrode.packed_field_um`
        at 0 and the short-crack keys at `particle.short_crack_fraction` 0, so caches keyed
        before these keys existed stay valid."""
        d = self.to_dict()
        im = self.imaging
        if not im.looks and not any(float(p) > 0 for p in im.looks_p.values()) and not set(im.randomize) & set(LOOK_FIELDS):
            for name in ("looks", "looks_p", *LOOK_FIELDS):
                d["imaging"].pop(name, None)
        for name in ("contact_overlap", "packed_field_um"):
            if not getattr(self.electrode, name):
                d["electrode"].pop(name)
        if not self.particle.short_crack_fraction:
            for name in ("short_crack_fraction", "short_crack_length_um", "short_crack_width_um"):
                d["particle"].pop(name)
        return d


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def _yaml(name: str) -> DictConfig:
    """One file of conf/synth without its Hydra entries (defaults list, hydra block)."""
    cfg = OmegaConf.load(CONF_DIR / name)
    for key in ("defaults", "hydra"):
        cfg.pop(key, None)
    return cfg


def load_config(preset: str = "gp", overrides: Sequence[str] = (), heldout: bool = False) -> SynthConfig:
    """conf/synth/config.yaml (or the frozen heldout.yaml on top of it) with a preset and overrides.

    Parameters
    ----------
    preset : "gp" (gradient porous) or "p" (pristine).
    overrides : Hydra-style overrides, e.g. ["imaging.noise_sd=0.05", "crops.pixel_size_um=[0.1,0.1]",
        "+imaging.randomize.noise_sd=[0.01,0.05]"]; parsed by Hydra's own parser, applied as
        Hydra applies them, but without composing a Hydra app (so it runs inside one).

    Raises
    ------
    fracscope.settings.SettingsError
        On an unknown preset or key, or a value that does not fit.
    """
    if not (CONF_DIR / "preset" / f"{preset}.yaml").is_file():
        raise SettingsError(f"unknown synth preset {preset!r}; known: {_presets()}")
    cfg = OmegaConf.merge({"preset": _yaml(f"preset/{preset}.yaml")}, _yaml("config.yaml"))
    if heldout:
        cfg = OmegaConf.merge(cfg, _yaml("heldout.yaml"))
    return with_overrides(SynthConfig.from_config(cfg), overrides)


def with_overrides(config: SynthConfig, overrides: Sequence[str]) -> SynthConfig:
    """`config` with Hydra-style override strings applied (see `load_config`)."""
    if not overrides:
        return config
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create(config.to_dict())
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key, value = override.key_or_group, override.value()
        if override.is_delete():
            raise SettingsError(f"synth override {override.input_line!r}: deleting a key is not supported")
        if key == "preset":
            if not (CONF_DIR / "preset" / f"{value}.yaml").is_file():
                raise SettingsError(f"unknown synth preset {value!r}; known: {_presets()}")
            cfg.preset = _yaml(f"preset/{value}.yaml")
            continue
        # `key=value` changes a key, `+key=value` adds one; an unknown key fails in `from_config`.
        OmegaConf.update(cfg, key, value, merge=True, force_add=override.is_add() or override.is_force_add())
    return SynthConfig.from_config(cfg)


def _presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "preset").glob("*.yaml"))
