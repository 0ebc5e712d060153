"""Class folders: one particle crop per image, filed under its damage class.

Layout (see data/README.md)::

    DIR/intact/<stem>.tif            any raster format; sub-folder names in any
    DIR/mildly_damaged/<stem>.png    spelling that `canonical_class_name` knows
    DIR/broken/<stem>.jpg
    DIR/<class>/<stem>_mask.png      optional particle mask (non-zero = particle),
    DIR/<class>/masks/<stem>.png     or here (also masks/<stem>_mask.png)
    DIR/<class>/<stem>_phases.png    optional phase codes 0-3

Each image is one particle with particle_id 1. Without a mask the instance map
is None and `meta["single_particle"]` is True: the particle is the one the
detector finds at the centre of the crop.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from fracscope.crop import CropSpec
from fracscope.data.formats.classnames import canonical_class_name, is_class_name
from fracscope.data.formats.raster import (
    pick_pixel_size,
    IMAGE_SUFFIXES,
    is_image_file,
    read_image,
    read_label_image,
    read_phase_map,
    write_png,
)
from fracscope.io.tiff import write_image_tiff
from fracscope.types import CLASS_NAMES, AnnotatedImage, ParticleAnnotation, SEMImage

_SIDECAR_SUFFIXES: tuple[str, ...] = ("_mask", "_phases", "_labels")
_MASK_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp")


def class_dirs(path: Path) -> list[tuple[Path, str]]:
    """(folder, canonical class) for each sub-folder of `path` named after a damage class."""
    path = Path(path)
    if not path.is_dir():
        return []
    found = [(d, canonical_class_name(d.name)) for d in sorted(path.iterdir()) if d.is_dir() and is_class_name(d.name)]
    return sorted(found, key=lambda dc: (CLASS_NAMES.index(dc[1]), dc[0].name))


def is_class_folder_dataset(path: Path) -> bool:
    """True when `path` has at least one class-named sub-folder holding an image."""
    return any(any(is_image_file(f) for f in d.iterdir()) for d, _ in class_dirs(path))


def _find_sidecar(folder: Path, stem: str, candidates: tuple[str, ...]) -> Path | None:
    for rel in candidates:
        for ext in _MASK_SUFFIXES:
            p = folder / f"{rel.format(stem=stem)}{ext}"
            if p.is_file():
                return p
    return None


def read_class_folders(path: Path, pixel_size_um: float | None = None) -> list[AnnotatedImage]:
    """Read a class-folder dataset, one AnnotatedImage per particle crop.

    Parameters
    ----------
    path : Path
        Folder holding intact/, mildly_damaged/, broken/ (any known spelling).
    pixel_size_um : float, optional
        Overrides the pixel size from the TIFF resolution.

    Returns
    -------
    list of AnnotatedImage
        Ordered by class, then file name. `meta["class_folder"]` is the folder name.
    """
    path = Path(path)
    dirs = class_dirs(path)
    if not dirs:
        raise FileNotFoundError(f"{path}: no class sub-folders (expected some of {CLASS_NAMES})")
    items, seen = [], {}
    for folder, cls in dirs:
        for img_path in sorted(folder.iterdir()):
            if not is_image_file(img_path) or img_path.stem.endswith(_SIDECAR_SUFFIXES):
                continue
            stem = img_path.stem
            if stem in seen:
                raise ValueError(f"image stem {stem!r} appears twice: {seen[stem]} and {img_path}")
            seen[stem] = img_path
            items.append(_read_crop(img_path, folder, cls, pixel_size_um))
    if not items:
        raise FileNotFoundError(f"{path}: class folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    return items


def _read_crop(img_path: Path, folder: Path, cls: str, override_px: float | None) -> AnnotatedImage:
    stem = img_path.stem
    pixels, tiff_px = read_image(img_path)
    mask_path = _find_sidecar(folder, stem, ("{stem}_mask", "masks/{stem}", "masks/{stem}_mask"))
    phase_path = _find_sidecar(folder, stem, ("{stem}_phases", "masks/{stem}_phases"))
    instances = phases = None
    if mask_path is not None:
        mask = read_label_image(mask_path)
        if mask.shape != pixels.shape:
            raise ValueError(f"{mask_path}: mask is {mask.shape}, image {img_path.name} is {pixels.shape}")
        instances = (mask > 0).astype(np.uint32)
        if not instances.any():
            raise ValueError(f"{mask_path}: mask is empty")
    if phase_path is not None:
        phases = read_phase_map(phase_path)
        if phases.shape != pixels.shape:
            raise ValueError(f"{phase_path}: phase map is {phases.shape}, image is {pixels.shape}")
    px, source = pick_pixel_size(override_px, tiff_px)
    return AnnotatedImage(
        image=SEMImage(pixels=pixels, pixel_size_um=px, pixel_size_source=source, source=str(img_path)),
        stem=stem,
        instances=instances,
        phases=phases,
        particles=[ParticleAnnotation(particle_id=1, class_name=cls)],
        meta={"class_folder": folder.name, "single_particle": True},
    )


def write_class_folders(out_dir: Path, items: Iterable[AnnotatedImage], margin: float = CropSpec.margin) -> Path:
    """File particles as crops under <class>/ with `_mask.png` and `_phases.png` beside them.

    An item with exactly one particle is written whole under its own stem (it is
    already a crop). Otherwise each classified particle is cut out of its image:
    its bounding box grown by `margin` × its longer side on every side, clipped to
    the image, saved as `<stem>_p<particle_id>`. Unclassified particles are skipped.

    Returns
    -------
    Path
        `out_dir`.
    """
    out_dir = Path(out_dir)
    for name in CLASS_NAMES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    for item in items:
        labelled = [p for p in item.particles if p.class_name is not None]
        if len(item.particles) == 1 and labelled:
            _write_crop(out_dir / labelled[0].class_name, item.stem, item, (slice(None), slice(None)), 1)
            continue
        if item.instances is None:
            raise ValueError(f"{item.stem}: {len(item.particles)} particles but no instance map to cut them out")
        boxes = ndi.find_objects(item.instances)
        height, width = item.instances.shape
        for p in labelled:
            box = boxes[p.particle_id - 1] if 0 < p.particle_id <= len(boxes) else None
            if box is None:
                raise ValueError(f"{item.stem}: particle {p.particle_id} is not in the instance map")
            pad = int(round(margin * max(box[0].stop - box[0].start, box[1].stop - box[1].start)))
            win = (
                slice(max(0, box[0].start - pad), min(height, box[0].stop + pad)),
                slice(max(0, box[1].start - pad), min(width, box[1].stop + pad)),
            )
            _write_crop(out_dir / p.class_name, f"{item.stem}_p{p.particle_id}", item, win, p.particle_id)
    return out_dir


def _write_crop(folder: Path, stem: str, item: AnnotatedImage, win: tuple[slice, slice], pid: int) -> None:
    write_image_tiff(folder / f"{stem}.tif", np.asarray(item.image.pixels)[win], item.image.pixel_size_um)
    if item.instances is not None:
        write_png(folder / f"{stem}_mask.png", ((item.instances[win] == pid) * 255).astype(np.uint8))
    if item.phases is not None:
        write_png(folder / f"{stem}_phases.png", np.asarray(item.phases, dtype=np.uint8)[win])
