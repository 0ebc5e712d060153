"""Label image + CSV, as napari and Fiji users keep their annotations.

Layout (see data/README.md)::

    DIR/<stem>.tif               the image (any raster format)
    DIR/<stem>_labels.tif        instance label image (uint8/16/32, or integral float32)
    DIR/<stem>_phases.png        optional phase codes 0-3 (.tif also accepted)
    DIR/labels.csv               one CSV for all images: columns image,label,class
      or DIR/<stem>.csv          one CSV per image: columns label,class
      (or <stem>_labels.csv / <stem>_classes.csv)

Extra numeric CSV columns become particle measurements. Labels in the image
without a CSV row are particles without a class (class None); CSV rows whose
label is not in the label image are an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from fracscope.data.formats.classnames import canonical_class_name
from fracscope.data.formats.raster import (
    pick_pixel_size,
    IMAGE_SUFFIXES,
    read_image,
    read_label_image,
    read_phase_map,
    write_png,
)
from fracscope.io.tiff import write_image_tiff, write_label_tiff
from fracscope.types import AnnotatedImage, ParticleAnnotation, SEMImage

LABELS_SUFFIX = "_labels"
CSV_NAME = "labels.csv"
# Accepted header spellings (lower case) of the three CSV columns.
_IMAGE_COLS: tuple[str, ...] = ("image", "file", "filename", "file_name", "stem")
_LABEL_COLS: tuple[str, ...] = ("label", "label_id", "particle_id", "id")
_CLASS_COLS: tuple[str, ...] = ("class", "class_name", "category")


def label_files(path: Path) -> list[Path]:
    """The `<stem>_labels.<ext>` files directly in `path`."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(
        f for f in path.iterdir()
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and f.stem.endswith(LABELS_SUFFIX)
    )


def is_label_csv_dataset(path: Path) -> bool:
    """True when `path` holds at least one `_labels` image and one CSV."""
    return bool(label_files(path)) and any(Path(path).glob("*.csv"))


def _pick_column(df: pd.DataFrame, names: tuple[str, ...], csv_path: Path, required: bool = True) -> str | None:
    lower = {c.strip().lower(): c for c in df.columns}
    for n in names:
        if n in lower:
            return lower[n]
    if required:
        raise ValueError(f"{csv_path}: no column named any of {names}; columns are {list(df.columns)}")
    return None


def _image_key(value: str) -> str:
    """Stem that a CSV `image` cell refers to ("a", "a.tif", "sub/a_labels.tif" → "a")."""
    stem = Path(str(value).strip()).stem if Path(str(value)).suffix.lower() in IMAGE_SUFFIXES else str(value).strip()
    stem = Path(stem).name
    return stem[: -len(LABELS_SUFFIX)] if stem.endswith(LABELS_SUFFIX) else stem


def _read_rows(path: Path, stems: list[str]) -> dict[str, pd.DataFrame]:
    """CSV rows per image stem, from one global CSV or per-image CSVs."""
    per_image = {}
    for stem in stems:
        for name in (f"{stem}.csv", f"{stem}{LABELS_SUFFIX}.csv", f"{stem}_classes.csv"):
            if (path / name).is_file():
                per_image[stem] = path / name
                break
    globals_ = [p for p in sorted(path.glob("*.csv")) if p not in per_image.values()]
    rows: dict[str, pd.DataFrame] = {}
    for stem, csv_path in per_image.items():
        df = _read_csv(csv_path)
        _pick_column(df, _LABEL_COLS, csv_path)
        rows[stem] = df.assign(_csv=str(csv_path))
    for csv_path in globals_:
        df = _read_csv(csv_path)
        img_col = _pick_column(df, _IMAGE_COLS, csv_path, required=False)
        if img_col is None:
            raise ValueError(
                f"{csv_path}: a shared CSV needs an image column ({_IMAGE_COLS}); per-image CSVs must be "
                f"named <stem>.csv, <stem>_labels.csv or <stem>_classes.csv for stems {stems}"
            )
        keys = df[img_col].map(_image_key)
        unknown = sorted(set(keys) - set(stems))
        if unknown:
            raise ValueError(f"{csv_path}: rows name images without a _labels file: {unknown[:10]}")
        for stem, group in df.groupby(keys, sort=False):
            if stem in rows:
                raise ValueError(f"{csv_path}: image {stem!r} is also described by {rows[stem]['_csv'].iloc[0]}")
            rows[stem] = group.drop(columns=[img_col]).assign(_csv=str(csv_path))
    return rows


def _read_csv(csv_path: Path) -> pd.DataFrame:
    """Read every cell as text (so image stems like "007" stay text); numbers are parsed later."""
    return pd.read_csv(csv_path, dtype=str, skipinitialspace=True)


def _numeric_column(col: pd.Series) -> pd.Series | None:
    """The column as floats when every non-empty cell is a number, else None."""
    values = pd.to_numeric(col, errors="coerce")
    return values if values.notna().sum() == col.notna().sum() and col.notna().any() else None


def _find_image(path: Path, stem: str) -> Path:
    for f in sorted(path.iterdir()):
        if f.stem == stem and f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            return f
    raise FileNotFoundError(f"{path}: label image {stem}{LABELS_SUFFIX}.* has no image {stem}.<{'|'.join(IMAGE_SUFFIXES)}>")


def read_label_csv(path: Path, pixel_size_um: float | None = None) -> list[AnnotatedImage]:
    """Read label images with their class CSV(s).

    Parameters
    ----------
    path : Path
        Folder with `<stem>` images, `<stem>_labels` images and CSVs.
    pixel_size_um : float, optional
        Overrides the pixel size from the image's TIFF resolution.

    Returns
    -------
    list of AnnotatedImage
        One per label image, sorted by stem; particles sorted by label.
    """
    path = Path(path)
    labels = label_files(path)
    if not labels:
        raise FileNotFoundError(f"{path}: no <stem>{LABELS_SUFFIX}.tif label images")
    stems = [f.stem[: -len(LABELS_SUFFIX)] for f in labels]
    if len(set(stems)) != len(stems):
        raise ValueError(f"{path}: several label images share a stem: {stems}")
    rows = _read_rows(path, stems)
    return [_read_one(path, stem, lab, rows.get(stem), pixel_size_um) for stem, lab in zip(stems, labels)]


def _read_one(path: Path, stem: str, label_path: Path, rows: pd.DataFrame | None, override_px) -> AnnotatedImage:
    img_path = _find_image(path, stem)
    pixels, tiff_px = read_image(img_path)
    instances = read_label_image(label_path)
    if instances.shape != pixels.shape:
        raise ValueError(f"{label_path}: label image is {instances.shape}, image {img_path.name} is {pixels.shape}")
    phases = None
    for ext in (".png", ".tif", ".tiff"):
        if (path / f"{stem}_phases{ext}").is_file():
            phases = read_phase_map(path / f"{stem}_phases{ext}")
            if phases.shape != pixels.shape:
                raise ValueError(f"{stem}_phases{ext}: phase map is {phases.shape}, image is {pixels.shape}")
            break
    present = np.unique(instances)
    present = present[present > 0]
    classes: dict[int, str | None] = {}
    measurements: dict[int, dict[str, float]] = {}
    if rows is not None:
        classes, measurements = _parse_rows(rows, set(present.tolist()), label_path)
    particles = [
        ParticleAnnotation(int(pid), classes.get(int(pid)), measurements.get(int(pid), {})) for pid in present
    ]
    px, source = pick_pixel_size(override_px, tiff_px)
    return AnnotatedImage(
        image=SEMImage(pixels=pixels, pixel_size_um=px, pixel_size_source=source, source=str(img_path)),
        stem=stem,
        instances=instances,
        phases=phases,
        particles=particles,
    )


def _parse_rows(rows: pd.DataFrame, present: set[int], label_path: Path) -> tuple[dict, dict]:
    csv_path = Path(rows["_csv"].iloc[0])
    rows = rows.drop(columns=["_csv"])
    label_col = _pick_column(rows, _LABEL_COLS, csv_path)
    class_col = _pick_column(rows, _CLASS_COLS, csv_path, required=False)
    label_vals = pd.to_numeric(rows[label_col], errors="coerce")
    if label_vals.isna().any() or (label_vals != label_vals.round()).any() or (label_vals <= 0).any():
        raise ValueError(f"{csv_path}: column {label_col!r} must hold positive integer labels")
    ids = label_vals.astype(np.int64).to_numpy()
    missing = sorted(set(ids.tolist()) - present)
    if missing:
        raise ValueError(f"{csv_path}: labels {missing[:20]} are not in the label image {label_path.name}")
    dup = pd.Series(ids).duplicated()
    if dup.any():
        raise ValueError(f"{csv_path}: label(s) {sorted(set(ids[dup.to_numpy()].tolist()))} listed twice for one image")
    extra = {c: _numeric_column(rows[c]) for c in rows.columns if c not in (label_col, class_col)}
    extra = {c: v.to_numpy(dtype=float) for c, v in extra.items() if v is not None}
    class_cells = rows[class_col].tolist() if class_col is not None else [None] * len(ids)
    classes, measurements = {}, {}
    for i, pid in enumerate(ids.tolist()):
        if class_cells[i] is not None and not pd.isna(class_cells[i]):
            classes[pid] = canonical_class_name(str(class_cells[i]), f"{csv_path} label {pid}")
        measurements[pid] = {c: float(v[i]) for c, v in extra.items()}
    return classes, measurements


def write_label_csv(out_dir: Path, items: Iterable[AnnotatedImage]) -> Path:
    """Write `<stem>.tif`, `<stem>_labels.tif`, `<stem>_phases.png` and one `labels.csv`.

    Label images are uint16 when every id fits (Fiji opens those), uint32 otherwise.
    The CSV has columns image,label,class and one column per measurement.

    Returns
    -------
    Path
        The CSV written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for item in items:
        if item.instances is None:
            raise ValueError(f"{item.stem}: the label-image format needs an instance map")
        write_image_tiff(out_dir / f"{item.stem}.tif", item.image.pixels, item.image.pixel_size_um)
        lab = item.instances
        small = lab.size and int(lab.max()) < 2**16
        write_label_tiff(out_dir / f"{item.stem}{LABELS_SUFFIX}.tif", lab, dtype=np.uint16 if small else np.uint32)
        if item.phases is not None:
            write_png(out_dir / f"{item.stem}_phases.png", np.asarray(item.phases, dtype=np.uint8))
        for p in item.particles:
            records.append({"image": item.stem, "label": int(p.particle_id), "class": p.class_name or "",
                            **p.measurements})
    csv_path = out_dir / CSV_NAME
    pd.DataFrame.from_records(records, columns=None if records else ["image", "label", "class"]).to_csv(
        csv_path, index=False
    )
    return csv_path
