"""Sample groups of input files: from sub-folder names or from a mapping CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from fracscope.io.read import group_of


def load_group_map(csv_path: str | Path) -> dict[str, str]:
    """Read a CSV that maps files to groups.

    Columns: ``file`` plus either ``group`` or any of ``sample``, ``cycle`` (joined as
    ``"<sample> <cycle>"``, e.g. ``GP-NCM 100``). ``file`` may be a bare file name or a
    path relative to the input folder.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"groups_csv not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    columns = set(rows[0])
    if "file" not in columns or not ({"group", "sample", "cycle"} & columns):
        raise ValueError(
            f"{path}: needs a 'file' column and a 'group' column or 'sample'/'cycle' columns; found {sorted(columns)}"
        )
    out: dict[str, str] = {}
    for row in rows:
        if "group" in columns and row.get("group"):
            group = row["group"].strip()
        else:
            group = " ".join(row[c].strip() for c in ("sample", "cycle") if c in columns and row.get(c))
        out[row["file"].strip().replace("\\", "/")] = group
    return out


def group_for(source: str | Path, root: str | Path | None, mapping: dict[str, str] | None) -> str:
    """Group of one file: the mapping CSV wins (relative path, then file name), else its sub-folder."""
    source = Path(source)
    if mapping:
        if root is not None:
            try:
                rel = source.resolve().relative_to(Path(root).resolve()).as_posix()
                if rel in mapping:
                    return mapping[rel]
            except ValueError:
                pass
        if source.name in mapping:
            return mapping[source.name]
    return group_of(source, root) if root is not None else ""
