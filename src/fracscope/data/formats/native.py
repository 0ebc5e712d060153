"""The fracscope dataset format: what the synthetic generator writes.

Layout (see data/README.md)::

    DIR/annotations.json           COCO instance json + fracscope extras
    DIR/images/<stem>.tif          image, uint8/uint16/float32, ImageJ TIFF, pixel size in µm
    DIR/masks/<stem>_instances.tif uint32 instance label map (zlib TIFF)
    DIR/masks/<stem>_phases.png    uint8 phase codes 0 matrix, 1 solid, 2 pore, 3 crack

It is a COCO superset: any COCO tool can read annotations.json + images/.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fracscope.data.formats.coco import COCO_CATEGORIES, category_classes, encode_particles
from fracscope.data.formats.raster import (
    pick_pixel_size,
    read_image,
    read_label_image,
    read_phase_map,
    write_png,
)
from fracscope.io.tiff import write_image_tiff, write_label_tiff
from fracscope.types import CLASS_NAMES, AnnotatedImage, ParticleAnnotation, SEMImage

FORMAT_NAME = "fracscope"
FORMAT_VERSION = 1
ANNOTATIONS_FILE = "annotations.json"
# COCO keys of an annotation; every other key is a per-particle measurement.
_COCO_ANN_KEYS = frozenset({"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "particle_id"})
_COCO_IMAGE_KEYS = frozenset({"id", "file_name", "width", "height", "pixel_size_um", "meta"})


def instances_path(root: Path, stem: str) -> Path:
    """Where the instance map of `stem` lives."""
    return Path(root) / "masks" / f"{stem}_instances.tif"


def phases_path(root: Path, stem: str) -> Path:
    """Where the phase map of `stem` lives."""
    return Path(root) / "masks" / f"{stem}_phases.png"


def is_native_dataset(path: Path) -> bool:
    """True for a folder with annotations.json and a masks/ folder."""
    path = Path(path)
    return (path / ANNOTATIONS_FILE).is_file() and (path / "masks").is_dir()


def _jsonable(value):
    """Convert numpy scalars/arrays and non-finite floats for json (NaN/inf → None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_native(out_dir: Path, items: Iterable[AnnotatedImage], dataset_meta: dict | None = None) -> Path:
    """Write items in the fracscope format, streaming one image at a time.

    Parameters
    ----------
    out_dir : Path
        Created if missing. Files of the same stems are overwritten.
    items : iterable of AnnotatedImage
        Consumed once; only the json entries are kept in memory. Items without an
        instance map still record their particles' classes (empty segmentation).
    dataset_meta : dict, optional
        Stored in the json `info` (e.g. synth_version, seed, preset).

    Returns
    -------
    Path
        The annotations.json written (last, so a crash leaves no valid dataset).
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    cat_ids = {c["name"]: c["id"] for c in COCO_CATEGORIES}
    images, annotations, stems = [], [], set()
    need_unlabelled = False
    for image_id, item in enumerate(items, start=1):
        if item.stem in stems:
            raise ValueError(f"duplicate stem {item.stem!r}: every image needs a unique stem")
        stems.add(item.stem)
        pixels = np.asarray(item.image.pixels)
        file_name = f"{item.stem}.tif"
        write_image_tiff(out_dir / "images" / file_name, pixels, item.image.pixel_size_um)
        height, width = pixels.shape[-2:]
        entry = {"id": image_id, "file_name": file_name, "width": int(width), "height": int(height),
                 "pixel_size_um": item.image.pixel_size_um}
        image_meta = {k: v for k, v in item.meta.items() if k != "dataset"}  # "dataset" is filled on read
        if image_meta:
            entry["meta"] = _jsonable(image_meta)
        images.append(entry)
        ids = [p.particle_id for p in item.particles]
        if item.instances is not None:
            if item.instances.shape != (height, width):
                raise ValueError(f"{item.stem}: instance map {item.instances.shape} != image {(height, width)}")
            write_label_tiff(instances_path(out_dir, item.stem), item.instances)
            encoded = encode_particles(item.instances, ids)
        else:
            encoded = {pid: {"segmentation": [], "area": 0, "bbox": [0, 0, 0, 0]} for pid in ids}
        if item.phases is not None:
            write_png(phases_path(out_dir, item.stem), np.asarray(item.phases, dtype=np.uint8))
        for p in item.particles:
            need_unlabelled |= p.class_name is None
            cat = cat_ids[p.class_name] if p.class_name is not None else len(CLASS_NAMES) + 1
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                   "particle_id": int(p.particle_id)}
            ann.update(encoded[p.particle_id])
            clash = _COCO_ANN_KEYS & set(p.measurements)
            if clash:
                raise ValueError(f"{item.stem} particle {p.particle_id}: measurement names clash with COCO keys {clash}")
            ann.update(_jsonable(p.measurements))
            annotations.append(ann)
    categories = list(COCO_CATEGORIES)
    if need_unlabelled:
        categories.append({"id": len(CLASS_NAMES) + 1, "name": "particle", "supercategory": "particle"})
    info = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **_jsonable(dict(dataset_meta or {}))}
    json_path = out_dir / ANNOTATIONS_FILE
    tmp = json_path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"info": info, "images": images, "annotations": annotations, "categories": categories}, f)
    tmp.replace(json_path)
    return json_path


def read_native(path: Path, pixel_size_um: float | None = None) -> list[AnnotatedImage]:
    """Read a fracscope-format dataset.

    Parameters
    ----------
    path : Path
        The dataset folder (or its annotations.json).
    pixel_size_um : float, optional
        Overrides the json and TIFF pixel sizes.

    Returns
    -------
    list of AnnotatedImage
        In json order. `instances`/`phases` are None where the mask files are absent.
        Measurements are every non-COCO annotation field (null → NaN). The json
        `info` is in `meta["dataset"]`.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    json_path = root / ANNOTATIONS_FILE
    if not json_path.is_file():
        raise FileNotFoundError(f"{root}: no {ANNOTATIONS_FILE} (fracscope format)")
    with open(json_path, encoding="utf-8") as f:
        coco = json.load(f)
    classes = category_classes(coco.get("categories", []), str(json_path))
    by_image: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    info = coco.get("info", {})
    return [_read_entry(root, e, by_image.get(int(e["id"]), []), classes, info, pixel_size_um) for e in coco["images"]]


def _read_entry(
    root: Path, entry: dict, anns: list[dict], classes: dict, info: dict, override_px: float | None
) -> AnnotatedImage:
    stem = Path(entry["file_name"]).stem
    img_path = root / "images" / entry["file_name"]
    pixels, tiff_px = read_image(img_path, keep_pages=True)
    shape = pixels.shape[-2:]
    if (entry.get("height"), entry.get("width")) != shape:
        raise ValueError(f"{img_path}: {shape} px on disk but {entry.get('height')}x{entry.get('width')} in the json")
    inst_file, phase_file = instances_path(root, stem), phases_path(root, stem)
    instances = read_label_image(inst_file) if inst_file.is_file() else None
    phases = read_phase_map(phase_file) if phase_file.is_file() else None
    for name, arr in (("instance map", instances), ("phase map", phases)):
        if arr is not None and arr.shape != shape:
            raise ValueError(f"{root}: {name} of {stem!r} is {arr.shape}, image is {shape}")
    particles = []
    for ann in anns:
        where = f"{root / ANNOTATIONS_FILE} annotation id {ann.get('id')}"
        if "particle_id" not in ann:
            raise ValueError(f"{where}: no 'particle_id' (is this plain COCO? use format='coco')")
        if int(ann["category_id"]) not in classes:
            raise ValueError(f"{where}: category_id {ann['category_id']} is not in the categories list")
        meas = {k: (math.nan if v is None else float(v)) for k, v in ann.items()
                if k not in _COCO_ANN_KEYS and (v is None or isinstance(v, (int, float)))}
        particles.append(ParticleAnnotation(int(ann["particle_id"]), classes[int(ann["category_id"])], meas))
    json_source = "synthetic" if "synth_version" in info else "coco"
    # the fracscope writer stores ImageJ resolution
    px, source = pick_pixel_size(override_px, tiff_px, entry.get("pixel_size_um"), json_source, tiff_source="imagej")
    meta = dict(entry.get("meta", {}))
    meta["dataset"] = info
    return AnnotatedImage(
        image=SEMImage(pixels=pixels, pixel_size_um=px, pixel_size_source=source, source=str(img_path)),
        stem=stem,
        instances=instances,
        phases=phases,
        particles=particles,
        meta=meta,
    )
