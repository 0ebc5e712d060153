"""fracscope: find, classify and measure cathode secondary particles in SEM cross-sections."""

__version__ = "0.1.0"
