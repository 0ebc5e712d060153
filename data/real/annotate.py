"""Make the real development set's annotations: candidate outlines, hand edits, label TIFF, overlay.

Usage (from the repository root, with fracscope importable)::

    python data/real/annotate.py candidates NAME [--force]  # detector/classical outlines -> NAME/candidates.tif
    python data/real/annotate.py show NAME         # NAME/candidates_overlay.png: the candidate ids the edits name
    python data/real/annotate.py apply NAME        # candidates.tif + edits.json -> labels.tif, particles.csv, overlay.png
    python data/real/annotate.py crop NAME X0 Y0 X1 Y1 [ZOOM] [--candidates]   # zoomed crop for checking by eye

NAME is one of `IMAGES` (pt_bse, samba_3phase, qbi_xct). The candidate step is run once and its
output is committed, so the edits (which name candidate ids) stay valid whatever a later detector
finds. The edits file (`NAME/edits.json`) is applied in this order:

* ``split``: ``{"id": k, "cut": [[x, y], ...], "new_id": m, "new_side": [x, y]}``: the polyline (3 px
  wide) cuts object k; the connected part containing ``new_side`` becomes m, the rest stays k (the
  line's pixels go to the nearer part);
* ``merge``: lists of ids; the first id takes the others' pixels (fragments of one broken particle);
* ``replace``: ``{"id": k, "polygon": [[x, y], ...]}``: object k's outline becomes the polygon;
* ``add``: ``{"id": m, "polygon": [[x, y], ...]}``: a missed particle (ids >= 1000 by convention);
* ``delete``: ids to drop (false detections, pieces of the matrix, split-off pieces that are no particle);
* ``hull``: ids whose outline becomes their convex hull (a round section whose open, binder-filled crack
  the threshold left out);
* ``keep_largest``: ids that keep only their largest connected piece (slivers left by painted polygons);
* ``classes``: ``{"id": "intact" | "mildly_damaged" | "broken" | "unsure"}``: one entry for every
  object that remains (the step stops and lists the ids without one);
* ``notes``: ``{"id": "free text"}``.

Polygons are vertex lists in full-image pixel coordinates (x = column, y = row) and are painted over
whatever is there, in file order. After the edits, objects whose centroid lies outside the image's
annotated region (image C only) are dropped, objects under the image's minimum equivalent diameter
are reported as an error (a hand-made outline must be deleted, not silently lost), and the remaining
ids are renumbered 1..N in the order of their edit ids.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage import draw, filters, io, measure, morphology, segmentation

HERE = Path(__file__).resolve().parent
CLASSES = ("intact", "mildly_damaged", "broken", "unsure")
# Outline colours (BGR for OpenCV): intact green, mildly damaged yellow, broken red, unsure magenta.
CLASS_BGR = {"intact": (0, 200, 0), "mildly_damaged": (0, 220, 255), "broken": (0, 0, 255), "unsure": (255, 0, 255)}
CANDIDATE_BGR = (255, 200, 0)


@dataclass(frozen=True)
class ImageSpec:
    """One image of the set: its file, source, how candidates are made, and the annotation rules."""

    file: str
    source: str  # the original file (copied with its licence)
    licence: str
    route: str  # "learned" | "pt_band"
    detector_pixel_size_um: float | None  # the pixel size given to the learned detector (None: it estimates)
    min_diameter_px: float  # smaller sections are not annotated
    region: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 (exclusive) of the annotated area
    zoom: int = 1  # overlay upscaling


IMAGES: dict[str, ImageSpec] = {
    "pt_bse": ImageSpec(
        file="bil_nmc811_pt_infiltrated_bse.png",
        source="/work/shared/real/bil_nmc811_pt_infiltrated_bse.png",
        licence="/work/shared/real/LICENSE-BatteryImagingLibrary-MIT.txt",
        route="pt_band",
        detector_pixel_size_um=None,
        min_diameter_px=20.0,
        zoom=3,
    ),
    "samba_3phase": ImageSpec(
        file="3_phase.tif",
        source="/work/shared/reference/samba-web/3_phase.tif",
        licence="/work/shared/reference/samba-web/LICENSE",
        route="learned",
        detector_pixel_size_um=None,
        min_diameter_px=40.0,
        zoom=1,
    ),
    "qbi_xct": ImageSpec(
        file="qbi_nmc90_xct_slice.png",
        source="/work/shared/real/qbi_nmc90_xct_slice.png",
        licence="/work/shared/real/LICENSE-Quantitative-Big-Imaging-Apache-2.0.txt",
        route="learned",
        detector_pixel_size_um=0.2,
        min_diameter_px=10.0,
        region=(0, 0, 320, 320),
        zoom=2,
    ),
}


def read_grey(path: Path) -> np.ndarray:
    """The image as a 2-D array, as stored (uint8 or uint16)."""
    pixels = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else io.imread(path)
    return pixels if pixels.ndim == 2 else pixels[..., 0]


def display_u8(pixels: np.ndarray) -> np.ndarray:
    """0.5-99.5 % percentile stretch to uint8, for overlays."""
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    return (np.clip((pixels.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- candidates
def pt_band_candidates(pixels: np.ndarray, min_diameter_px: float) -> np.ndarray:
    """Particles of the Pt-infiltrated BSE image: the mid-grey band, holes filled, distance watershed.

    Particles are mid-grey (~125 after smoothing); Pt-filled pores and gaps are bright (> 150),
    carbon-binder and the Al collector darker (< 100). Filling holes puts Pt-filled internal pores and
    cracks back into their section; touching sections are split where the distance map has a neck.
    """
    smooth = filters.gaussian(pixels.astype(np.float32), 1.0, preserve_range=True)
    band = (smooth > 100) & (smooth < 145)
    band = ndi.binary_opening(band, morphology.disk(1))
    band = ndi.binary_fill_holes(band)
    min_area_px = np.pi * (min_diameter_px / 2) ** 2 / 2  # half the minimum: border-cut pieces stay for review
    dist = ndi.distance_transform_edt(band)
    # A low h splits touching sections generously; over-split pieces are merged back by hand.
    peaks = morphology.h_maxima(filters.gaussian(dist, 1.0, preserve_range=True), 1.0)
    labels = segmentation.watershed(-dist, measure.label(peaks), mask=band)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_area_px] = 0
    return segmentation.relabel_sequential(labels)[0].astype(np.uint32)


def learned_candidates(pixels: np.ndarray, pixel_size_um: float | None) -> np.ndarray:
    """The shipped learned detector's instances (it estimates the pixel size when none is given)."""
    from fracscope.detect.learned import LearnedDetector
    from fracscope.types import SEMImage

    detector = LearnedDetector(threads=1)
    image = SEMImage(pixels=pixels, pixel_size_um=pixel_size_um, pixel_size_source="override" if pixel_size_um else "none")
    return detector.detect(image).astype(np.uint32)


def make_candidates(name: str, force: bool) -> None:
    spec = IMAGES[name]
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    if (folder / "candidates.tif").exists() and not force:
        raise SystemExit(f"{folder / 'candidates.tif'} exists and edits.json names its ids; --force to remake it")
    image_path = folder / spec.file
    if not image_path.exists():
        shutil.copyfile(spec.source, image_path)
        shutil.copyfile(spec.licence, folder / Path(spec.licence).name)
    pixels = read_grey(image_path)
    if spec.route == "pt_band":
        labels = pt_band_candidates(pixels, spec.min_diameter_px)
    else:
        labels = learned_candidates(pixels, spec.detector_pixel_size_um)
    tifffile.imwrite(folder / "candidates.tif", labels.astype(np.uint16), compression="zlib")
    print(f"{name}: {int(labels.max())} candidates -> {folder / 'candidates.tif'}")
    show_candidates(name)


def show_candidates(name: str) -> None:
    """candidates_overlay.png (not committed): every candidate outline with the id the edits use."""
    spec = IMAGES[name]
    folder = HERE / name
    labels = tifffile.imread(folder / "candidates.tif")
    render_overlay(read_grey(folder / spec.file), labels, {}, folder / "candidates_overlay.png", spec.zoom, spec.region)


# ------------------------------------------------------------------------------------ edits
def _polygon_mask(polygon: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    pts = np.asarray(polygon, dtype=float)
    rr, cc = draw.polygon(pts[:, 1], pts[:, 0], shape)
    mask = np.zeros(shape, bool)
    mask[rr, cc] = True
    return mask


def _cut_mask(cut: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    pts = np.round(np.asarray(cut, dtype=float)).astype(np.int32)
    cv2.polylines(mask, [pts.reshape(-1, 1, 2)], False, 1, thickness=3)
    return mask.astype(bool)


def apply_edits(candidates: np.ndarray, edits: dict) -> np.ndarray:
    """Candidate labels (edit ids) after split, merge, replace, add, delete, hull and keep_largest, in that order."""
    labels = candidates.astype(np.int32).copy()
    for s in edits.get("split", []):
        k = s["id"]
        _require(labels, k, "split")
        obj = labels == k
        parts = measure.label(obj & ~_cut_mask(s["cut"], labels.shape), connectivity=1)
        x, y = s["new_side"]
        side = parts[int(round(y)), int(round(x))]
        if side == 0:
            raise SystemExit(f"split of {k}: new_side {s['new_side']} is not inside the object off the cut")
        # The cut line's own pixels go to the nearer piece, so no sliver of the line stays behind.
        parts = np.where(obj, segmentation.expand_labels(parts, 3), 0)
        labels[parts == side] = s["new_id"]
    for group in edits.get("merge", []):
        for k in group:
            _require(labels, k, "merge")
        labels[np.isin(labels, group[1:])] = group[0]
    for r in edits.get("replace", []):
        _require(labels, r["id"], "replace")
        labels[labels == r["id"]] = 0
        labels[_polygon_mask(r["polygon"], labels.shape)] = r["id"]
    for a in edits.get("add", []):
        if np.any(labels == a["id"]):
            raise SystemExit(f"add: id {a['id']} is already in use")
        labels[_polygon_mask(a["polygon"], labels.shape)] = a["id"]
    for k in edits.get("delete", []):
        _require(labels, k, "delete")
        labels[labels == k] = 0
    for k in edits.get("hull", []):
        _require(labels, k, "hull")
        labels[morphology.convex_hull_image(labels == k) & ((labels == 0) | (labels == k))] = k
    for k in edits.get("keep_largest", []):
        _require(labels, k, "keep_largest")
        parts = measure.label(labels == k)
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        labels[(parts > 0) & (parts != np.argmax(sizes))] = 0
    return labels


def _require(labels: np.ndarray, k: int, what: str) -> None:
    if not np.any(labels == k):
        raise SystemExit(f"{what}: id {k} is not in the labels (already deleted or merged?)")


def finish(name: str) -> None:
    """candidates.tif + edits.json -> labels.tif (uint16, 1..N), particles.csv, overlay.png."""
    spec = IMAGES[name]
    folder = HERE / name
    pixels = read_grey(folder / spec.file)
    edits = json.loads((folder / "edits.json").read_text())
    labels = apply_edits(tifffile.imread(folder / "candidates.tif"), edits)
    props = {p.label: p for p in measure.regionprops(labels)}
    if spec.region is not None:
        x0, y0, x1, y1 = spec.region
        for k, p in list(props.items()):
            cy, cx = p.centroid
            if not (x0 <= cx < x1 and y0 <= cy < y1):
                labels[labels == k] = 0
                del props[k]
    small = [k for k, p in props.items() if p.equivalent_diameter_area < spec.min_diameter_px]
    classes = {int(k): v for k, v in edits.get("classes", {}).items()}
    notes = {int(k): v for k, v in edits.get("notes", {}).items()}
    missing = [k for k in props if k not in classes]
    unknown = sorted({v for v in classes.values()} - set(CLASSES))
    if small or missing or unknown:
        raise SystemExit(
            f"{name}: under {spec.min_diameter_px} px: {sorted(small)}; without a class: {sorted(missing)}; "
            f"unknown classes: {unknown}"
        )
    order = sorted(props)
    final = np.zeros(labels.shape, np.uint16)
    rows = []
    h, w = labels.shape
    for new_id, k in enumerate(order, start=1):
        p = props[k]
        final[labels == k] = new_id
        r0, c0, r1, c1 = p.bbox
        rows.append(
            {
                "id": new_id,
                "class": classes[k],
                "notes": notes.get(k, ""),
                "edit_id": k,
                "area_px": int(p.area),
                "eq_diameter_px": round(float(p.equivalent_diameter_area), 1),
                "border_cut": int(r0 == 0 or c0 == 0 or r1 == h or c1 == w),
            }
        )
    tifffile.imwrite(folder / "labels.tif", final, compression="zlib")
    with open(folder / "particles.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    view, shown = np.s_[:, :], None
    if spec.region is not None:  # the overlay shows the annotated rectangle and a margin, not the whole slice
        x0, y0, x1, y1 = spec.region
        top, left = max(y0 - 40, 0), max(x0 - 40, 0)
        view = np.s_[top:y1 + 40, left:x1 + 40]
        shown = (x0 - left, y0 - top, x1 - left, y1 - top)
    render_overlay(pixels[view], final[view], {r["id"]: r["class"] for r in rows}, folder / "overlay.png", spec.zoom, shown)
    counts = {c: sum(r["class"] == c for r in rows) for c in CLASSES}
    print(f"{name}: {len(rows)} particles {counts}; border-cut {sum(r['border_cut'] for r in rows)}")


# ---------------------------------------------------------------------------------- overlays
def render_overlay(
    pixels: np.ndarray,
    labels: np.ndarray,
    classes: dict[int, str],
    path: Path,
    zoom: int,
    region: tuple[int, int, int, int] | None,
) -> None:
    """Outlines (class colour; candidates cyan) and ids at each object's innermost point."""
    grey = display_u8(pixels)
    big = cv2.resize(grey, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    out = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    big_labels = cv2.resize(labels.astype(np.int32).astype(np.float32), None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST).astype(np.int32)
    edges = segmentation.find_boundaries(big_labels, mode="inner")
    edges = ndi.binary_dilation(edges) & (big_labels > 0)  # 2-3 px lines: visible at any zoom
    for k in np.unique(big_labels[edges]):
        colour = CLASS_BGR.get(classes.get(int(k), ""), CANDIDATE_BGR)
        out[edges & (big_labels == k)] = colour
    if region is not None:
        x0, y0, x1, y1 = region
        cv2.rectangle(out, (x0 * zoom, y0 * zoom), (x1 * zoom - 1, y1 * zoom - 1), (255, 255, 255), 1)
    for k in np.unique(labels):
        if k == 0:
            continue
        obj = np.pad(labels == k, 1)
        dist = ndi.distance_transform_edt(obj)
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        text = str(int(k))
        org = (int((x - 1) * zoom) - 5 * len(text), int((y - 1) * zoom) + 4)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), out)


def crop(name: str, box: tuple[int, int, int, int], zoom: int, use_candidates: bool, out: Path) -> None:
    """A zoomed crop of the image with outlines, for checking by eye (not part of the set)."""
    spec = IMAGES[name]
    folder = HERE / name
    pixels = read_grey(folder / spec.file)
    x0, y0, x1, y1 = box
    labels_file = folder / ("candidates.tif" if use_candidates else "labels.tif")
    labels = tifffile.imread(labels_file).astype(np.int32)
    classes = {}
    if not use_candidates:
        with open(folder / "particles.csv") as f:
            classes = {int(r["id"]): r["class"] for r in csv.DictReader(f)}
    # Stretch on the whole image so crops look alike.
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    sub = pixels[y0:y1, x0:x1].astype(np.float32)
    sub = np.clip((sub - lo) / max(hi - lo, 1e-6), 0, 1) * (np.iinfo(np.uint16).max if pixels.dtype == np.uint16 else 255)
    render_overlay(sub.astype(pixels.dtype), labels[y0:y1, x0:x1], classes, out, zoom, None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["candidates", "show", "apply", "crop"])
    parser.add_argument("name", choices=sorted(IMAGES))
    parser.add_argument("box", nargs="*", type=int, help="crop: X0 Y0 X1 Y1 [ZOOM]")
    parser.add_argument("--candidates", action="store_true", help="crop: show candidate ids")
    parser.add_argument("--force", action="store_true", help="candidates: remake candidates.tif")
    parser.add_argument("--out", default="/tmp/fracscope_crop.png")
    args = parser.parse_args(argv)
    if args.step == "candidates":
        make_candidates(args.name, args.force)
    elif args.step == "show":
        show_candidates(args.name)
    elif args.step == "apply":
        finish(args.name)
    else:
        if len(args.box) not in (4, 5):
            parser.error("crop needs X0 Y0 X1 Y1 [ZOOM]")
        zoom = args.box[4] if len(args.box) == 5 else 3
        crop(args.name, tuple(args.box[:4]), zoom, args.candidates, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
