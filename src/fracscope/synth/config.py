"""Compose the synthetic-data config (`conf/synth`) from Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fracscope import assets

CONF_DIR: Path = assets.CONF_DIR / "synth"

#: The generator's config type: the composed OmegaConf node of conf/synth/config.yaml.
SynthConfig = DictConfig


def load_config(preset: str = "gp", overrides: Sequence[str] = (), heldout: bool = False) -> DictConfig:
    """Compose conf/synth/config.yaml (or the frozen heldout.yaml) with a preset and overrides.

    Parameters
    ----------
    preset : "gp" (gradient porous) or "p" (pristine).
    overrides : Hydra-style overrides, e.g. ["imaging.noise_sd=0.05", "crops.pixel_size_um=[0.1,0.1]"].
    heldout : compose the frozen held-out benchmark config instead of the default one.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="heldout" if heldout else "config", overrides=[f"preset={preset}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra", None)
    return cfg
