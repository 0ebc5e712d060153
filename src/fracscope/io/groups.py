"""Sample groups of input files: from sub-folder names or from a mapping CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from fracscope.io.read import group_of, relative_source


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


def _row_keys(source: Path, root: str | Path | None) -> list[str]:
    """The CSV `file` values that name `source`, in order of precedence: relative path, file name."""
    rel = relative_source(source, root).as_posix()  # the file name alone outside (or without) the root
    return [rel, source.name] if rel != source.name else [source.name]


def group_for(source: str | Path, root: str | Path | None, mapping: dict[str, str] | None) -> str:
    """Group of one file: the mapping CSV wins (relative path, then file name), else its sub-folder."""
    source = Path(source)
    if mapping:
        for key in _row_keys(source, root):
            if key in mapping:
                return mapping[key]
    return group_of(source, root) if root is not None else ""


@dataclass(frozen=True)
class GroupMismatch:
    """How a groups CSV and the input files disagree."""

    unknown_rows: list[str]  # `file` values of the CSV that name no input file
    unmapped_files: list[str]  # input files that no row names, relative to the input folder (they keep their sub-folder's group)

    def __bool__(self) -> bool:
        return bool(self.unknown_rows or self.unmapped_files)

    def describe(self, limit: int = 5) -> str:
        """One line: both lists, each cut to `limit` names."""

        def names(items: list) -> str:
            shown = ", ".join(str(i) for i in items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        parts = []
        if self.unknown_rows:
            parts.append(f"{len(self.unknown_rows)} row(s) match no input file: {names(self.unknown_rows)}")
        if self.unmapped_files:
            parts.append(f"{len(self.unmapped_files)} input file(s) have no row: {names(self.unmapped_files)}")
        return "; ".join(parts)


def match_group_map(mapping: dict[str, str], files: list[Path], root: str | Path | None) -> GroupMismatch:
    """Which rows of `mapping` name none of `files`, and which of `files` no row names (as `group_for` looks)."""
    used: set[str] = set()
    unmapped = []
    for f in files:
        keys = _row_keys(Path(f), root)
        key = next((k for k in keys if k in mapping), None)
        if key is None:
            unmapped.append(keys[0])
        else:
            used.add(key)
    return GroupMismatch([name for name in mapping if name not in used], unmapped)
