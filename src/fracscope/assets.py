"""Where the built-in sample data and the shipped default model live."""

from __future__ import annotations

from pathlib import Path

# src/fracscope/assets.py -> repository root (the project runs from an editable install).
REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
DEFAULT_MODEL = REPO_ROOT / "models" / "fracscope_default.onnx"


def resolve_input(value: str | None) -> str:
    """The input to analyse: the built-in sample folder when none is given."""
    return str(SAMPLE_DIR) if value in (None, "", "sample") else str(value)


def resolve_model(value: str | None) -> str:
    """The model file: the shipped default when none is given."""
    if value in (None, "", "default"):
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(f"the shipped default model is missing: {DEFAULT_MODEL}")
        return str(DEFAULT_MODEL)
    return str(value)
