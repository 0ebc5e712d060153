"""Read SEM image files (TIFF, PNG, JPEG, BMP) into `SEMImage` pages with their pixel size."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile
from PIL import Image

from fracscope.io.databar import crop_data_bar
from fracscope.io.pixel_size import (
    SIDECAR_SUFFIXES,
    TAG_FEI_HELIOS,
    TAG_FEI_SFEG,
    PixelSize,
    coco_pixel_size_um,
    fei_image_height_px,
    sidecar_pixel_size,
    tiff_page_pixel_size,
)
from fracscope.io.prefetch import prefetch
from fracscope.io.scalebar import scale_bar_pixel_size_um
from fracscope.types import ReadFailure, SEMImage

TIFF_SUFFIXES: frozenset[str] = frozenset({".tif", ".tiff"})
SUPPORTED_SUFFIXES: frozenset[str] = TIFF_SUFFIXES | {".png", ".jpg", ".jpeg", ".bmp"}  # BMP: some JEOL and Hitachi saves

# ITU-R BT.601 luma weights: what ImageJ and most SEM software use for RGB -> grey.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class ReadOptions:
    """How to read files.

    pixel_size_um: override for every page (wins over any metadata).
    coco_pixel_sizes: {file_name: pixel_size_um} from a COCO file, used when the file has
        no pixel-size metadata.
    crop_bar: remove the SEM data bar at the bottom (see `fracscope.io.databar`).
    """

    pixel_size_um: float | None = None
    coco_pixel_sizes: Mapping[str, float] | None = None
    crop_bar: bool = False


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """A 2-D grey image from grey, RGB or RGBA pixels, keeping uint8/uint16, else float32.

    Colour (channels last) is converted with BT.601 weights; alpha is dropped. Integer
    types other than uint8/uint16 become uint16 when their values fit, float32 otherwise.
    """
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            a = rgb[..., 0]
        else:
            grey = rgb.astype(np.float32) @ _LUMA.astype(np.float32)
            a = np.round(grey).astype(a.dtype) if a.dtype.kind in "ui" else grey
    elif a.ndim == 3 and a.shape[-1] in (1, 2):  # grey (+ alpha)
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"not a 2-D grey or RGB(A) image: shape {a.shape}")
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype in (np.uint8, np.uint16, np.float32):
        return a
    if a.dtype.kind in "ui" and a.size and a.min() >= 0 and a.max() <= np.iinfo(np.uint16).max:
        return a.astype(np.uint16)
    return a.astype(np.float32)


def _tiff_page_array(page: tifffile.TiffPage) -> np.ndarray:
    a = page.asarray()
    axes = page.axes
    if "S" in axes and axes.index("S") < axes.index("X"):  # planar RGB: samples first
        a = np.moveaxis(a, axes.index("S"), -1)
    return np.squeeze(a) if a.ndim > 3 else a


def _is_reduced(page: tifffile.TiffPage) -> bool:
    """True for thumbnails / pyramid levels (NewSubfileType bit 0), which are not pages."""
    return bool(int(page.subfiletype) & 1)


def _finish(
    pixels: np.ndarray, size: PixelSize, source: str, page: int, bar_rows: int | None, options: ReadOptions
) -> SEMImage:
    pixels = to_grey(pixels)
    if options.pixel_size_um is not None:
        size = PixelSize(float(options.pixel_size_um), "override")
    if size.value_um is None:
        # Last resort, read before the bar is cropped: the scale bar in the data bar.
        reading = scale_bar_pixel_size_um(pixels, bar_rows)
        if reading is not None:
            size = PixelSize(reading.pixel_size_um, "scale_bar")
    if options.crop_bar:
        pixels, _ = crop_data_bar(pixels, known_rows=bar_rows)
    return SEMImage(pixels=pixels, pixel_size_um=size.value_um, pixel_size_source=size.source, source=source, page=page)


def _size_beside(path: str | Path, coco_pixel_sizes: Mapping[str, float] | None,
                 shape_px: tuple[int, int] | None) -> PixelSize:
    """A file's pixel size from outside its tags: the microscope's text file beside it (for an image of
    `shape_px`, rows and columns), else the COCO mapping."""
    size = sidecar_pixel_size(path, shape_px)
    if size.value_um is None:
        coco = coco_pixel_size_um(path, coco_pixel_sizes)
        if coco is not None:
            size = PixelSize(coco, "coco")
    return size


def _page_shape(page: tifffile.TiffPage) -> tuple[int, int]:
    """(rows, columns) of a TIFF page, from its tags."""
    return int(page.imagelength), int(page.imagewidth)


def _read_tiff(path: Path, options: ReadOptions) -> list[SEMImage]:
    images: list[SEMImage] = []
    beside: PixelSize | None = None  # looked up once per file, when a page has no tagged size
    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and not _is_reduced(p)]
        if not pages:
            raise ValueError("TIFF has no image pages")
        imagej = tif.imagej_metadata
        first = tiff_page_pixel_size(pages[0], imagej)
        for index, page in enumerate(pages):
            size = tiff_page_pixel_size(page, imagej)
            # ImageJ and some vendors tag only the first page of a stack.
            if size.value_um is None:
                size = first
            if size.value_um is None and options.pixel_size_um is None:
                beside = beside or _size_beside(path, options.coco_pixel_sizes, _page_shape(page))
                size = beside
            fei: dict = {}
            for code in (TAG_FEI_SFEG, TAG_FEI_HELIOS):
                value = page.tags.valueof(code)
                if isinstance(value, Mapping):
                    fei.update(value)
            height = fei_image_height_px(fei)
            bar_rows = page.shape[0] - height if height is not None and height < page.shape[0] else None
            images.append(_finish(_tiff_page_array(page), size, str(path), index, bar_rows, options))
    for image in images:
        image.n_pages = len(images)
    return images


def _read_pil(path: Path, options: ReadOptions) -> list[SEMImage]:
    with Image.open(path) as im:
        im.load()
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        pixels = np.asarray(im)
    size = (_size_beside(path, options.coco_pixel_sizes, pixels.shape[:2]) if options.pixel_size_um is None
            else PixelSize(None, "none"))
    return [_finish(pixels, size, str(path), 0, None, options)]


def read_image_pages(
    path: str | Path,
    pixel_size_um: float | None = None,
    coco_pixel_sizes: Mapping[str, float] | None = None,
    crop_bar: bool = False,
) -> list[SEMImage]:
    """Every page of an SEM image file as a grey `SEMImage` with its pixel size.

    Parameters
    ----------
    path : str or Path
        A TIFF (8/16-bit, float, multi-page, RGB(A)), PNG, JPEG or BMP file.
    pixel_size_um : float, optional
        Override for every page (source "override").
    coco_pixel_sizes : mapping, optional
        {file_name: pixel_size_um} used when the file has no metadata (source "coco").
    crop_bar : bool
        Remove the SEM data bar at the bottom.

    Returns
    -------
    list of SEMImage
        One per page, ``page`` = page index, ``source`` = str(path).

    Raises
    ------
    ValueError, OSError
        For unsupported, corrupt or empty files (`iter_images` turns these into
        `ReadFailure`).
    """
    return _read(Path(path), ReadOptions(pixel_size_um, coco_pixel_sizes, crop_bar))


def _read(path: Path, options: ReadOptions) -> list[SEMImage]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"unsupported file type {suffix!r}")
    images = _read_tiff(path, options) if suffix in TIFF_SUFFIXES else _read_pil(path, options)
    for image in images:
        if image.pixels.size == 0:
            raise ValueError("empty image")
    return images


def read_pixel_size(
    path: str | Path,
    page: int = 0,
    pixel_size_um: float | None = None,
    coco_pixel_sizes: Mapping[str, float] | None = None,
) -> PixelSize:
    """Pixel size of one page of a file from its metadata alone (pixels are not decoded).

    Same precedence as `read_image_pages`: override, FEI, Zeiss, TESCAN, ImageJ / TIFF
    resolution, a Hitachi or JEOL text file beside the image, COCO mapping, else ``PixelSize(None, "none")``.
    """
    if pixel_size_um is not None:
        return PixelSize(float(pixel_size_um), "override")
    size = PixelSize(None, "none")
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and not _is_reduced(p)]
            size = tiff_page_pixel_size(pages[page], tif.imagej_metadata)
            if size.value_um is None and page > 0:
                size = tiff_page_pixel_size(pages[0], tif.imagej_metadata)
            shape = _page_shape(pages[page])
    else:
        try:
            with Image.open(path) as im:  # reads the header only
                shape = (im.height, im.width)
        except OSError:
            shape = None  # the pixels fail later, where a bad file is reported
    return size if size.value_um is not None else _size_beside(path, coco_pixel_sizes, shape)


def load_file(path: str | Path, options: ReadOptions | None = None) -> list[SEMImage | ReadFailure]:
    """Pages of one file, or a single `ReadFailure`; never raises for a bad file."""
    try:
        return list(_read(Path(path), options or ReadOptions()))
    except Exception as exc:  # noqa: BLE001 - any decoder error means "this file is bad"
        return [ReadFailure(str(path), f"{type(exc).__name__}: {exc}")]


def has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


@dataclass(frozen=True)
class FoundFiles:
    """What `find_image_files` found: the files to read, and the files of other types it passed over."""

    files: list[Path]
    unsupported: list[Path]  # found in a folder or by a glob, with a suffix not in SUPPORTED_SUFFIXES


def find_image_files(inputs: str | Path | Iterable[str | Path]) -> FoundFiles:
    """Expand inputs into files, deterministic order, no duplicates.

    A directory gives its supported files, recursively, sorted by path; a string with
    ``*?[`` is a (recursive ``**``) glob, sorted. Files of other types that a folder or a
    glob turns up are returned apart, as `unsupported`, except an image's own text file
    (same name, ``.txt``: where Hitachi and JEOL microscopes write the pixel size). A file named as such is kept as
    given, whatever its suffix (reading it will report an unsupported type). A list keeps
    its order. Paths that do not exist are kept, so reading reports them.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out: list[Path] = []
    passed_over: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file())
        elif isinstance(item, str) and has_glob(item) and not p.exists():
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        else:
            out.append(p)
            continue
        images = [f for f in found if f.suffix.lower() in SUPPORTED_SUFFIXES]
        out.extend(images)
        # A microscope's text file beside an image (Hitachi, JEOL: same name, .txt) is part of it.
        sidecars = {f.with_suffix(s) for f in images for s in SIDECAR_SUFFIXES}
        passed_over.extend(f for f in found if f.suffix.lower() not in SUPPORTED_SUFFIXES and f not in sidecars)
    return FoundFiles(_unique(out), _unique(passed_over))


def _unique(paths: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    return [f for f in paths if not (f in seen or seen.add(f))]


def list_image_files(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """The files `find_image_files` would read (see there)."""
    return find_image_files(inputs).files


def iter_images(
    inputs: str | Path | Iterable[str | Path],
    pixel_size_um: float | None = None,
    coco_pixel_sizes: Mapping[str, float] | None = None,
    crop_bar: bool = False,
    n_threads: int = 0,
) -> Iterator[SEMImage | ReadFailure]:
    """Yield every page of every image file under `inputs`, or a `ReadFailure` per bad file.

    Parameters
    ----------
    inputs : str, Path or list
        Files, directories (recursive) or glob patterns; see `list_image_files`.
    pixel_size_um, coco_pixel_sizes, crop_bar
        See `read_image_pages`.
    n_threads : int
        0 decodes in the caller's thread; > 0 decodes ahead in that many threads
        (order kept, see `fracscope.io.prefetch`).

    Yields
    ------
    SEMImage or ReadFailure
    """
    options = ReadOptions(pixel_size_um, coco_pixel_sizes, crop_bar)
    files = list_image_files(inputs)
    if n_threads > 0:
        results: Iterable = prefetch(files, load=lambda f: load_file(f, options), n_threads=n_threads)
    else:
        results = (load_file(f, options) for f in files)
    for pages in results:
        if isinstance(pages, ReadFailure):
            yield pages
        else:
            yield from pages


def relative_source(path: str | Path, root: str | Path | None) -> PurePosixPath:
    """`path` below the input folder `root` (both resolved); its file name alone without a root or outside it."""
    if root is not None:
        try:
            return PurePosixPath(Path(path).resolve().relative_to(Path(root).resolve()).as_posix())
        except ValueError:
            pass
    return PurePosixPath(Path(path).name)


def group_of(path: str | Path, root: str | Path) -> str:
    """Sample group of `path`: its first folder below `root` ('' at top level or outside root)."""
    rel = relative_source(path, root)
    return rel.parts[0] if len(rel.parts) > 1 else ""
