"""Plain COCO instance segmentation, as CVAT and labelme2coco export it.

Reads polygons, compressed RLE (counts as a string) and uncompressed RLE (counts
as a list), builds one uint32 instance map per image and takes the damage class
from the category name. No phase maps. The RLE helpers here are shared with the
fracscope format, which is a COCO superset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage as ndi

from fracscope.data.formats.classnames import canonical_class_name
from fracscope.data.formats.raster import pick_pixel_size, read_image
from fracscope.io.tiff import write_image_tiff
from fracscope.types import CLASS_NAMES, AnnotatedImage, ParticleAnnotation, SEMImage

COCO_CATEGORIES: list[dict] = [
    {"id": i + 1, "name": name, "supercategory": "particle"} for i, name in enumerate(CLASS_NAMES)
]
SEGMENTATION_ENCODINGS: tuple[str, ...] = ("rle", "rle_uncompressed", "polygon")


# --------------------------------------------------------------------------- RLE


def uncompressed_rle(local_mask: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> dict:
    """COCO uncompressed RLE of a mask given only inside its bounding box.

    Parameters
    ----------
    local_mask : ndarray of bool, shape (h, w)
        The mask cropped to a box whose top-left corner is `offset` (row, col).
    offset : tuple of int
        Position of the box in the full image.
    shape : tuple of int
        (H, W) of the full image.

    Returns
    -------
    dict
        {"size": [H, W], "counts": [...]}: run lengths over the column-major
        (Fortran) pixel order, starting with a run of zeros. Costs
        O(mask pixels), not O(image pixels).
    """
    height, width = int(shape[0]), int(shape[1])
    cols, rows = np.nonzero(np.asarray(local_mask, dtype=bool).T)  # column-major order
    if rows.size == 0:
        return {"size": [height, width], "counts": [height * width]}
    flat = (cols.astype(np.int64) + offset[1]) * height + rows.astype(np.int64) + offset[0]
    breaks = np.flatnonzero(np.diff(flat) != 1)
    starts = np.concatenate([flat[:1], flat[breaks + 1]])
    ends = np.concatenate([flat[breaks], flat[-1:]]) + 1  # exclusive
    gaps = starts - np.concatenate([[0], ends[:-1]])
    counts = np.empty(2 * starts.size, dtype=np.int64)
    counts[0::2] = gaps
    counts[1::2] = ends - starts
    tail = height * width - int(ends[-1])
    out = counts.tolist() + ([tail] if tail else [])
    return {"size": [height, width], "counts": out}


def compress_rle(rle: dict) -> dict:
    """Compressed COCO RLE (counts as str) from an uncompressed one."""
    height, width = rle["size"]
    comp = mask_utils.frPyObjects(rle, height, width)
    return {"size": [int(height), int(width)], "counts": comp["counts"].decode("ascii")}


def mask_polygons(local_mask: np.ndarray, offset: tuple[int, int]) -> list[list[float]]:
    """COCO polygons (x0, y0, x1, y1, …) of the outer contours of a mask.

    Vertices sit on pixel centres (COCO x = col + 0.5), so the polygon passes
    through the boundary pixels. Holes are dropped: a particle mask is filled.
    """
    m = np.ascontiguousarray(np.asarray(local_mask, dtype=np.uint8))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64) + (offset[1] + 0.5, offset[0] + 0.5)
        if len(pts) < 3:  # COCO needs >= 3 vertices; widen a sliver into a tiny box
            x, y = pts[:, 0].min(), pts[:, 1].min()
            x1, y1 = pts[:, 0].max(), pts[:, 1].max()
            pts = np.array([[x - 0.5, y - 0.5], [x1 + 0.5, y - 0.5], [x1 + 0.5, y1 + 0.5], [x - 0.5, y1 + 0.5]])
        polys.append([round(float(v), 2) for v in pts.ravel()])
    return polys


def rle_string_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (the inverse of pycocotools' rleToString)."""
    s = counts.decode("ascii") if isinstance(counts, bytes) else counts
    out: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _counts_to_local(counts: list[int], height: int, width: int, where: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Local bool mask and (row, col) offset of its box, from uncompressed run lengths."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"{where}: RLE counts sum to {counts.sum()}, expected {height}x{width} = {height * width}")
    ends = np.cumsum(counts)
    starts = ends - counts
    on_starts, on_lens = starts[1::2], counts[1::2]
    keep = on_lens > 0
    on_starts, on_lens = on_starts[keep], on_lens[keep]
    if on_lens.size == 0:
        return np.zeros((0, 0), bool), (0, 0)
    # Flat (column-major) index of every foreground pixel: O(area), not O(image).
    flat = np.repeat(on_starts - np.cumsum(on_lens) + on_lens, on_lens) + np.arange(int(on_lens.sum()))
    rows, cols = flat % height, flat // height
    r0, c0 = int(rows.min()), int(cols.min())
    local = np.zeros((int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1), bool)
    local[rows - r0, cols - c0] = True
    return local, (r0, c0)


def segmentation_to_local(segmentation, height: int, width: int, where: str = "") -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a COCO segmentation to its box: (bool mask of the box, (row0, col0) of the box).

    Accepts polygons, compressed RLE (counts str) and uncompressed RLE (counts list).
    Work is proportional to the mask, so many annotations on a big image stay cheap.
    """
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            raise ValueError(f"{where}: segmentation has no polygon with >= 3 vertices")
        counts = rle_string_counts(mask_utils.merge(mask_utils.frPyObjects(polys, height, width))["counts"])
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(s) for s in segmentation.get("size", [height, width])]
        if size != [height, width]:
            raise ValueError(f"{where}: RLE size {size} differs from the image size {[height, width]}")
        raw = segmentation["counts"]
        counts = list(raw) if isinstance(raw, list) else rle_string_counts(raw)
    else:
        raise ValueError(
            f"{where}: segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}"
        )
    return _counts_to_local(counts, height, width, where)


def segmentation_to_mask(segmentation, height: int, width: int, where: str = "") -> np.ndarray:
    """Decode a COCO segmentation (polygons, compressed or uncompressed RLE) to a full-size bool mask."""
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            raise ValueError(f"{where}: segmentation has no polygon with >= 3 vertices")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(s) for s in segmentation.get("size", [height, width])]
        if size != [height, width]:
            raise ValueError(f"{where}: RLE size {size} differs from the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"{where}: segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def encode_particles(
    instances: np.ndarray, particle_ids: Iterable[int], encoding: str = "rle"
) -> dict[int, dict]:
    """COCO `segmentation`, `area` and `bbox` of each particle of an instance map.

    One `find_objects` pass, then work proportional to each particle's box.
    Particles absent from the map get an empty polygon list, area 0 and bbox [0, 0, 0, 0].
    """
    if encoding not in SEGMENTATION_ENCODINGS:
        raise ValueError(f"encoding must be one of {SEGMENTATION_ENCODINGS}, got {encoding!r}")
    boxes = ndi.find_objects(instances)
    out: dict[int, dict] = {}
    for pid in particle_ids:
        box = boxes[pid - 1] if 0 < pid <= len(boxes) else None
        if box is None:
            out[pid] = {"segmentation": [], "area": 0, "bbox": [0, 0, 0, 0]}
            continue
        local = instances[box] == pid
        offset = (box[0].start, box[1].start)
        if encoding == "polygon":
            seg = mask_polygons(local, offset)
        else:
            seg = uncompressed_rle(local, offset, instances.shape)
            if encoding == "rle":
                seg = compress_rle(seg)
        h, w = local.shape
        out[pid] = {
            "segmentation": seg,
            "area": int(local.sum()),
            "bbox": [float(offset[1]), float(offset[0]), float(w), float(h)],
        }
    return out


# ------------------------------------------------------------------------ reading


def find_coco_json(path: Path) -> Path:
    """The COCO json of a dataset: `path` itself, or the single one in it or in `annotations/`."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.json")) + sorted((path / "annotations").glob("*.json"))
    cocos = [p for p in candidates if _looks_like_coco(p)]
    if len(cocos) == 1:
        return cocos[0]
    if not cocos:
        raise FileNotFoundError(f"{path}: no COCO json (with 'images' and 'annotations') found here or in annotations/")
    raise ValueError(f"{path}: several COCO json files, pass one of them: {[str(p) for p in cocos]}")


def _looks_like_coco(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    return '"images"' in head and ('"annotations"' in head or '"categories"' in head)


def resolve_image_path(file_name: str, json_path: Path) -> Path:
    """Find an image named in a COCO json.

    Tried in order: as given (absolute), beside the json, in `images/` beside the
    json, in `images/` one level up (CVAT: annotations/instances_default.json next
    to images/), one level up, and the bare file name in those `images/` folders.
    """
    name = Path(file_name)
    base = json_path.parent
    tries = [name] if name.is_absolute() else []
    for root in (base, base / "images", base.parent / "images", base.parent):
        tries.append(root / name)
    for root in (base / "images", base.parent / "images", base):
        tries.append(root / name.name)
    for t in tries:
        if t.is_file():
            return t
    raise FileNotFoundError(
        f"image {file_name!r} of {json_path} not found; looked in: " + ", ".join(str(t) for t in tries)
    )


def category_classes(categories: list[dict], where: str) -> dict[int, str | None]:
    """Category id → canonical class name (None for instance-only categories)."""
    return {int(c["id"]): canonical_class_name(c["name"], f"{where} category id {c['id']}") for c in categories}


def read_coco(path: Path, pixel_size_um: float | None = None) -> list[AnnotatedImage]:
    """Read a plain COCO instance-segmentation dataset.

    Parameters
    ----------
    path : Path
        The json file, or a folder holding exactly one COCO json (or one in `annotations/`).
    pixel_size_um : float, optional
        Overrides every other pixel size source.

    Returns
    -------
    list of AnnotatedImage
        One per COCO image, in json order. Particle ids are 1..n in annotation
        order; `meta["coco_annotation_ids"][i]` is the COCO id of particle i + 1.
        Overlapping masks are painted largest first, so a small particle lying on a
        large one keeps its pixels. `phases` is None.
    """
    json_path = find_coco_json(Path(path))
    with open(json_path, encoding="utf-8") as f:
        coco = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{json_path}: not a COCO instance json, missing the {key!r} list")
    classes = category_classes(coco["categories"], str(json_path))
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    known_ids = {int(im["id"]) for im in coco["images"]}
    orphans = set(by_image) - known_ids
    if orphans:
        raise ValueError(f"{json_path}: annotations refer to unknown image ids {sorted(orphans)[:10]}")
    return [
        _read_coco_image(im, by_image.get(int(im["id"]), []), classes, json_path, pixel_size_um)
        for im in coco["images"]
    ]


def _read_coco_image(
    entry: dict, anns: list[dict], classes: dict[int, str | None], json_path: Path, override_px: float | None
) -> AnnotatedImage:
    img_path = resolve_image_path(entry["file_name"], json_path)
    pixels, tiff_px = read_image(img_path)
    height, width = pixels.shape[-2:]
    if (entry.get("height"), entry.get("width")) not in ((None, None), (height, width)):
        raise ValueError(
            f"{json_path}: image {entry['file_name']!r} is {height}x{width} px on disk "
            f"but {entry.get('height')}x{entry.get('width')} in the json"
        )
    instances = np.zeros((height, width), dtype=np.uint32)
    particles, masks = [], []  # masks: (pid, local mask, offset), kept box-sized
    for pid, ann in enumerate(anns, start=1):
        where = f"{json_path} annotation id {ann.get('id')}"
        cat = int(ann["category_id"])
        if cat not in classes:
            raise ValueError(f"{where}: category_id {cat} is not in the categories list")
        if "segmentation" not in ann or not ann["segmentation"]:
            raise ValueError(f"{where}: no segmentation (boxes alone cannot give an instance map)")
        local, (r0, c0) = segmentation_to_local(ann["segmentation"], height, width, where)
        masks.append((pid, local, (r0, c0)))
        particles.append(ParticleAnnotation(particle_id=pid, class_name=classes[cat]))
    for pid, local, (r0, c0) in sorted(masks, key=lambda m: -int(m[1].sum())):
        instances[r0 : r0 + local.shape[0], c0 : c0 + local.shape[1]][local] = pid
    px, source = pick_pixel_size(override_px, tiff_px, entry.get("pixel_size_um"))
    return AnnotatedImage(
        image=SEMImage(pixels=pixels, pixel_size_um=px, pixel_size_source=source, source=str(img_path)),
        stem=Path(entry["file_name"]).stem,
        instances=instances,
        phases=None,
        particles=particles,
        meta={"coco_image_id": int(entry["id"]), "coco_annotation_ids": [a.get("id") for a in anns]},
    )


# ------------------------------------------------------------------------ writing


def write_coco(out_dir: Path, items: Iterable[AnnotatedImage], encoding: str = "rle") -> Path:
    """Write items as plain COCO: `images/<stem>.tif` and `annotations.json`.

    Parameters
    ----------
    out_dir : Path
        Created if missing.
    items : iterable of AnnotatedImage
        Streamed; each needs an instance map. Unlabelled particles get category
        "particle" (id 4), added only when needed.
    encoding : {"rle", "rle_uncompressed", "polygon"}
        How `segmentation` is stored. Polygons lose pixel exactness at the boundary.

    Returns
    -------
    Path
        The json written.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    cat_ids = {name: c["id"] for name, c in zip(CLASS_NAMES, COCO_CATEGORIES)}
    images, annotations, need_unlabelled = [], [], False
    for image_id, item in enumerate(items, start=1):
        if item.instances is None:
            raise ValueError(f"{item.stem}: plain COCO needs an instance map")
        file_name = f"{item.stem}.tif"
        write_image_tiff(out_dir / "images" / file_name, item.image.pixels, item.image.pixel_size_um)
        height, width = item.instances.shape
        entry = {"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)}
        if item.image.pixel_size_um is not None:
            entry["pixel_size_um"] = float(item.image.pixel_size_um)
        images.append(entry)
        encoded = encode_particles(item.instances, [p.particle_id for p in item.particles], encoding)
        for p in item.particles:
            need_unlabelled |= p.class_name is None
            cat = cat_ids[p.class_name] if p.class_name is not None else len(CLASS_NAMES) + 1
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0}
            ann.update(encoded[p.particle_id])
            annotations.append(ann)
    categories = list(COCO_CATEGORIES)
    if need_unlabelled:
        categories.append({"id": len(CLASS_NAMES) + 1, "name": "particle", "supercategory": "particle"})
    json_path = out_dir / "annotations.json"
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path
