"""predictions_coco.json: predictions as COCO instance segmentation with RLE masks.

Load it into CVAT (or any COCO tool), correct classes and masks, export, and train on
the corrections. Written in two steps so memory stays bounded: each image's record
is appended as one JSON line to a partial file while the run goes, and the COCO file
is assembled from it at close.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage as ndi

from fracscope.io.read import relative_source
from fracscope.report.tables import PROB_COLUMNS, image_key
from fracscope.types import CLASS_NAMES, ImageResult

COCO_JSON = "predictions_coco.json"
COCO_PARTIAL = ".predictions_coco.partial.jsonl"
CATEGORIES: list[dict] = [
    {"id": i + 1, "name": name, "supercategory": "particle"} for i, name in enumerate(CLASS_NAMES)
]


def box_rle(box: np.ndarray, row0: int, col0: int, height: int, width: int) -> dict:
    """Compressed COCO RLE of a full-image mask that is empty outside one box.

    Parameters
    ----------
    box : ndarray of bool, shape (h, w)
        The mask restricted to rows row0 .. row0 + h and columns col0 .. col0 + w.
    row0, col0 : int
        The box's first row and column in the image.
    height, width : int
        Image size.

    Returns
    -------
    dict
        {"size": [H, W], "counts": str}, identical to `pycocotools.mask.encode` of the
        full mask, at the cost of the box only.
    """
    h, w = box.shape
    # COCO RLE runs down columns: each box column, framed by a zero above and below, gives its
    # changes of value; their positions in the image's column-major order bound the runs.
    framed = np.zeros((w, h + 2), np.int8)
    framed[:, 1:-1] = box.T
    j, k = np.nonzero(np.diff(framed, axis=1))
    pos = (col0 + j) * height + row0 + k
    # A run that ends on a column's last row and one that starts on the next column's first row
    # are one run: their two changes fall on the same position.
    same = np.flatnonzero(pos[1:] == pos[:-1])
    pos = np.delete(pos, np.concatenate([same, same + 1]))
    total = height * width
    runs = np.diff(np.concatenate(([0], pos, [total]))).tolist()
    if runs[-1] == 0 and len(runs) > 1:  # ends with a run of ones: no empty zero run after it
        runs.pop()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def file_name(result: ImageResult, input_root: str | os.PathLike | None) -> str:
    """COCO `file_name`: the image's path relative to the input folder, so that importing the
    source folder into CVAT or Labelme matches it. A page of a multi-page file gets its
    stem's page tag (`A/f.tif` page 1 -> `A/f_p001.tif`): a name of its own, never the
    whole file's, whose other pages would take its annotations."""
    rel = relative_source(result.image.source, input_root)
    if result.image.n_pages > 1:
        rel = rel.with_name(f"{rel.stem}{result.stem[result.stem.rfind('_p'):]}{rel.suffix}")
    return rel.as_posix()


def image_record(result: ImageResult, input_root: str | os.PathLike | None = None) -> dict:
    """COCO image entry (without id) and its annotations (without ids) for one image."""
    image, page = image_key(result)
    labels = result.instances
    h, w = labels.shape[:2]
    record = {
        "image": {
            "file_name": file_name(result, input_root),
            "width": int(w),
            "height": int(h),
            "source": image,
            "page": page,
            "stem": result.stem,
            "group": result.group,
            "pixel_size_um": result.image.pixel_size_um,
            "pixel_size_source": result.image.pixel_size_source,
        },
        "annotations": [],
    }
    objects = ndi.find_objects(labels)
    for p in result.particles:
        pid = int(p.particle_id)
        if pid < 1 or pid > len(objects) or objects[pid - 1] is None:
            continue
        rs, cs = objects[pid - 1]
        box = labels[rs, cs] == pid
        area = int(np.count_nonzero(box))
        cls = CLASS_NAMES.index(p.class_name) if p.class_name in CLASS_NAMES else None
        if cls is None:
            continue
        attrs = {
            "particle_id": pid,
            "low_confidence": bool(p.low_confidence),
            "touches_border": bool(p.touches_border),
            "too_small": bool(p.too_small),
        }
        attrs.update({c: float(v) for c, v in zip(PROB_COLUMNS, p.probs)})
        record["annotations"].append(
            {
                "category_id": cls + 1,
                "segmentation": box_rle(box, rs.start, cs.start, h, w),
                "area": area,
                "bbox": [cs.start, rs.start, cs.stop - cs.start, rs.stop - rs.start],
                "iscrowd": 0,
                "score": float(p.probs[cls]),
                "attributes": attrs,
            }
        )
    return record


def _filter_partial(path: Path, done: set[tuple[str, int]]) -> None:
    """On resume keep only complete records of images that were committed."""
    if not path.exists():
        return
    tmp = path.with_suffix(".tmp")
    seen = set()
    changed = False  # whether the kept lines differ from the file
    with path.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
        for line in src:
            try:
                rec = json.loads(line)
                key = (rec["image"]["source"], int(rec["image"]["page"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                changed = True
                continue  # a line cut short by a crash
            if key in done and key not in seen:
                seen.add(key)
                dst.write(line if line.endswith("\n") else line + "\n")
                changed |= not line.endswith("\n")
            else:
                changed = True
    if changed:
        os.replace(tmp, path)
    else:  # nothing to drop: the file stays as it was (a resume with nothing to do changes no file)
        tmp.unlink()


class CocoWriter:
    """Streams COCO records per image and assembles predictions_coco.json at close."""

    def __init__(self, output_dir: str | os.PathLike, resume: bool = False, done: set[tuple[str, int]] = frozenset()):
        self.output_dir = Path(output_dir)
        self.partial = self.output_dir / COCO_PARTIAL
        if resume:
            _filter_partial(self.partial, set(done))
        self._file = self.partial.open("a" if resume else "w", encoding="utf-8")

    def add(self, record: dict) -> None:
        """Append one image's record (`image_record`) as one JSON line, flushed."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close_file(self) -> None:
        """Close the partial file, writing nothing more."""
        self._file.close()

    def close(self, info: dict | None = None) -> Path:
        """Write predictions_coco.json (images, annotations, categories).

        The partial file stays: a later resumed run appends to it.
        """
        self._file.close()
        path = self.output_dir / COCO_JSON
        tmp = path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.write('{"info": ' + json.dumps(info or {}, default=str))
            out.write(', "categories": ' + json.dumps(CATEGORIES))
            # Two passes over the partial file: images first, then annotations,
            # without holding either list in memory.
            out.write(', "images": [')
            for i, rec in enumerate(self._records()):
                out.write((", " if i else "") + json.dumps({"id": i + 1, **rec["image"]}))
            out.write('], "annotations": [')
            ann_id = 0
            for i, rec in enumerate(self._records()):
                for ann in rec["annotations"]:
                    ann_id += 1
                    out.write((", " if ann_id > 1 else "") + json.dumps({"id": ann_id, "image_id": i + 1, **ann}))
            out.write("]}\n")
        os.replace(tmp, path)
        return path

    def _records(self):
        with self.partial.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
