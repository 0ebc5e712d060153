"""Synthetic SEM cross-sections of cathode particles with exact ground truth.

`generate_crops` yields single centred particles, `generate_electrode` wide fields of
touching particles; `load_config` reads conf/synth (presets "gp" and "p", and the
frozen held-out config) into a typed `SynthConfig`. CLI: ``python -m fracscope.synth output=DIR kind=crops n=200``.
"""

from fracscope.synth.config import CONF_DIR, SynthConfig, load_config, with_overrides
from fracscope.synth.generate import SYNTH_VERSION, generate_crops, generate_electrode, make_crop, make_field

__all__ = [
    "CONF_DIR",
    "SYNTH_VERSION",
    "SynthConfig",
    "generate_crops",
    "generate_electrode",
    "load_config",
    "make_crop",
    "make_field",
    "with_overrides",
]
