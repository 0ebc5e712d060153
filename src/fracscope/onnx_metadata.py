"""JSON metadata stored in an ONNX file's ``metadata_props``: how model files carry their own config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import fracscope

T = TypeVar("T")


def read_props(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def write_prop(path: str | Path, key: str, value: str) -> None:
    """Set one ``metadata_props`` entry (replacing any previous one) in the ONNX file, in place."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
    model.producer_name = "fracscope"
    model.producer_version = fracscope.__version__
    onnx.save(model, str(path))


def dataclass_from_json(cls: type[T], text: str, error: type[Exception], what: str) -> T:
    """Build dataclass `cls` from JSON; unknown keys go to its ``extra`` dict (forward compatibility).

    Raises `error` (with `what` in the message) on malformed JSON or invalid fields.
    """
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise error(f"{what} must be a JSON object")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in raw.items() if k in known}
    unknown = {k: v for k, v in raw.items() if k not in known}
    if unknown:
        kwargs["extra"] = {**kwargs.get("extra", {}), **unknown}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise error(f"invalid {what}: {err}") from err
