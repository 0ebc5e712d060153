"""Where the built-in sample data, the shipped default model and the Hydra configs live."""

from __future__ import annotations

from pathlib import Path

# src/fracscope/assets.py -> repository root (the project runs from an editable install).
REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
DEFAULT_MODEL = REPO_ROOT / "models" / "fracscope_default.onnx"
DEFAULT_DETECTOR = REPO_ROOT / "models" / "fracscope_detector.onnx"
DEFAULT_PHASE_MODEL = REPO_ROOT / "models" / "fracscope_phases.onnx"
DEFAULT_SECTION_MODEL = REPO_ROOT / "models" / "fracscope_sections.onnx"
#: The Hydra config tree of every command (conf/infer.yaml, conf/train.yaml, conf/synth/, ...).
CONF_DIR = REPO_ROOT / "conf"


def resolve_input(value: str | None) -> str:
    """The input to analyse: the built-in sample folder when none is given."""
    return str(SAMPLE_DIR) if value in (None, "", "sample") else str(value)


def _resolve(value: str | Path | None, default: Path, what: str) -> str:
    if value in (None, "", "default"):
        if not default.is_file():
            raise FileNotFoundError(f"the shipped {what} is missing: {default}")
        return str(default)
    return str(value)


def resolve_model(value: str | None) -> str:
    """The particle model file: the shipped default when none is given."""
    return _resolve(value, DEFAULT_MODEL, "default model")


def resolve_detector(value: str | Path | None) -> str:
    """The learned detector file: the shipped one when none is given."""
    return _resolve(value, DEFAULT_DETECTOR, "learned detector")


def resolve_phase_model(value: str | Path | None) -> str:
    """The dense phase model file (`fracscope.phase_map`): the shipped one when none is given."""
    return _resolve(value, DEFAULT_PHASE_MODEL, "dense phase model")


def resolve_section_model(value: str | Path | None) -> str:
    """The section net file (`fracscope.sections.SectionNetModel`): the shipped one when none is given."""
    return _resolve(value, DEFAULT_SECTION_MODEL, "section net")
