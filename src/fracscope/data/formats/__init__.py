"""Dataset formats on disk: detection, reading and writing.

Four layouts load into `list[AnnotatedImage]` (details in data/README.md):

- ``fracscope``: the native format (COCO json + images/ + masks/ with instance and phase maps);
- ``coco``: plain COCO instance segmentation from CVAT / labelme2coco;
- ``class_folders``: crops filed under intact/, mildly_damaged/, broken/;
- ``label_csv``: napari/Fiji label images with a class CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from fracscope.data.formats.class_folders import is_class_folder_dataset, read_class_folders, write_class_folders
from fracscope.data.formats.classnames import CLASS_ALIASES, canonical_class_name
from fracscope.data.formats.coco import find_coco_json, read_coco, write_coco
from fracscope.data.formats.label_csv import is_label_csv_dataset, read_label_csv, write_label_csv
from fracscope.data.formats.native import is_native_dataset, read_native, write_native
from fracscope.types import AnnotatedImage

FORMAT_NAMES: tuple[str, ...] = ("fracscope", "coco", "class_folders", "label_csv")

_READERS: dict[str, Callable[..., list[AnnotatedImage]]] = {
    "fracscope": read_native,
    "coco": read_coco,
    "class_folders": read_class_folders,
    "label_csv": read_label_csv,
}

_EXPECTED = """expected one of:
  fracscope     DIR/annotations.json + DIR/images/ + DIR/masks/<stem>_instances.tif
  coco          a COCO json file, or DIR holding one COCO json (or DIR/annotations/*.json)
  class_folders DIR/intact/, DIR/mildly_damaged/, DIR/broken/ holding particle crops
  label_csv     DIR/<stem>.tif + DIR/<stem>_labels.tif + a CSV (image,label,class or per-image label,class)
see data/README.md"""


def detect_format(path: str | Path) -> str:
    """Name of the dataset format at `path` (one of `FORMAT_NAMES`).

    Raises
    ------
    FileNotFoundError
        When `path` does not exist.
    ValueError
        When the layout matches none of the formats; the message shows what each expects.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "fracscope" if is_native_dataset(path.parent) and path.name == "annotations.json" else "coco"
        raise ValueError(f"{path}: a dataset is a folder or a COCO .json file; {_EXPECTED}")
    if is_native_dataset(path):
        return "fracscope"
    if is_label_csv_dataset(path):
        return "label_csv"
    if is_class_folder_dataset(path):
        return "class_folders"
    try:
        find_coco_json(path)
        return "coco"
    except (FileNotFoundError, ValueError):
        pass
    raise ValueError(f"{path}: not a recognised dataset layout; {_EXPECTED}")


def read_dataset(path: str | Path, format: str = "auto", pixel_size_um: float | None = None) -> list[AnnotatedImage]:
    """Read a dataset into annotated images.

    Parameters
    ----------
    path : str or Path
        Dataset folder (or COCO json file).
    format : str
        "auto" (see `detect_format`) or one of `FORMAT_NAMES`.
    pixel_size_um : float, optional
        Pixel edge in µm for every image, overriding what the files say.

    Returns
    -------
    list of AnnotatedImage
    """
    name = detect_format(path) if format == "auto" else format
    if name not in _READERS:
        raise ValueError(f"unknown dataset format {format!r}; choose 'auto' or one of {FORMAT_NAMES}")
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    return _READERS[name](Path(path), pixel_size_um=pixel_size_um)


def write_dataset(
    out_dir: str | Path,
    items: Iterable[AnnotatedImage],
    dataset_meta: dict | None = None,
    format: str = "fracscope",
) -> Path:
    """Write annotated images to `out_dir`, streaming them one at a time.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing.
    items : iterable of AnnotatedImage
        Consumed once (a generator is fine).
    dataset_meta : dict, optional
        Dataset-level metadata (synth_version, seed …); kept only by the fracscope format.
    format : str
        "fracscope" (default, lossless), "coco" (RLE), "class_folders" or "label_csv".

    Returns
    -------
    Path
        The main file written (annotations.json, labels.csv) or the folder (class_folders).
    """
    out_dir = Path(out_dir)
    if format == "fracscope":
        return write_native(out_dir, items, dataset_meta)
    if format == "coco":
        return write_coco(out_dir, items)
    if format == "class_folders":
        return write_class_folders(out_dir, items)
    if format == "label_csv":
        return write_label_csv(out_dir, items)
    raise ValueError(f"unknown dataset format {format!r}; choose one of {FORMAT_NAMES}")


__all__ = [
    "CLASS_ALIASES",
    "FORMAT_NAMES",
    "canonical_class_name",
    "detect_format",
    "read_dataset",
    "write_dataset",
]
