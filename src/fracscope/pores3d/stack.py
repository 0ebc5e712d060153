"""Read a FIB-SEM stack lazily, with its voxel size.

A stack is a multi-page TIFF (ImageJ hyperstack, OME-TIFF or plain pages) or a folder of
2-D slices. Slices are read on demand, ``read(z0, z1)``, from a memory map where the file
allows it (uncompressed, contiguous) and page by page otherwise, so a stack larger than
memory is never loaded whole.

Voxel size, ``(z, y, x)`` in µm, first present wins (``VoxelSize.source``):

1. ``voxel_size_um`` given by the user                        -> "override"
2. OME ``PhysicalSizeZ/Y/X``                                   -> "ome"
3. ImageJ ``spacing`` (z) with ``unit`` and X/YResolution     -> "imagej"
4. in-plane size from other tags (FEI, Zeiss, TIFF resolution,
   see `fracscope.io.pixel_size`) with ``slice_spacing_um``    -> e.g. "fei+slice_spacing_um"

``slice_spacing_um`` also replaces a z spacing from the metadata. FIB-SEM slices are
usually thicker than the in-plane pixel (20 nm slices at 5-10 nm/px), so an unknown z is
an error, never a guess. Volumes are written by `fracscope.io.write_volume_tiff`.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from fracscope.io.memmap import release_pages
from fracscope.io.pixel_size import PLAUSIBLE_UM, tiff_page_pixel_size, unit_to_um
from fracscope.io.read import SUPPORTED_SUFFIXES, TIFF_SUFFIXES, read_image_pages, to_grey


class StackError(ValueError):
    """A stack that cannot be analysed as given: truncated, inconsistent, empty, or of unknown voxel size."""


@dataclass(frozen=True)
class VoxelSize:
    """Edge lengths of one voxel in µm, slice axis first, and where they came from."""

    z_um: float
    y_um: float
    x_um: float
    source: str = "override"

    @property
    def zyx(self) -> tuple[float, float, float]:
        """(z, y, x) in µm."""
        return (self.z_um, self.y_um, self.x_um)

    @property
    def volume_um3(self) -> float:
        """Volume of one voxel in µm³."""
        return self.z_um * self.y_um * self.x_um


@dataclass(frozen=True)
class _MetaVoxel:
    """Whatever the file says: any entry may be None."""

    z_um: float | None = None
    y_um: float | None = None
    x_um: float | None = None
    source: str = "none"


def _plausible(value_um: float | None) -> float | None:
    lo, hi = PLAUSIBLE_UM
    if value_um is None or not math.isfinite(value_um) or not lo <= value_um <= hi:
        return None
    return float(value_um)


def _rational(value: Any) -> float | None:
    try:
        if isinstance(value, tuple):
            return float(value[0]) / float(value[1]) if value[1] else None
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _imagej_voxel(imagej: dict | None, page: Any) -> _MetaVoxel:
    """ImageJ calibration: unit, X/YResolution (pixels per unit) and spacing (z, in unit)."""
    if not imagej or "unit" not in imagej:
        return _MetaVoxel()
    scale = unit_to_um(str(imagej["unit"]))
    if scale is None:
        return _MetaVoxel()
    x_res = _rational(page.tags.valueof(282))
    y_res = _rational(page.tags.valueof(283))
    x = _plausible(scale / x_res) if x_res else None
    y = _plausible(scale / y_res) if y_res else x
    z = _plausible(float(imagej["spacing"]) * scale) if "spacing" in imagej else None
    return _MetaVoxel(z, y, x, "imagej") if x is not None else _MetaVoxel(z, None, None, "imagej")


def _ome_voxel(ome_xml: str | None) -> _MetaVoxel:
    """PhysicalSizeZ/Y/X of the first OME ``Pixels`` element (default unit µm)."""
    if not ome_xml:
        return _MetaVoxel()
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return _MetaVoxel()
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return _MetaVoxel()
    out: dict[str, float | None] = {}
    for axis in "ZYX":
        value = pixels.get(f"PhysicalSize{axis}")
        scale = unit_to_um(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        out[axis] = _plausible(float(value) * scale) if value is not None and scale is not None else None
    return _MetaVoxel(out["Z"], out["Y"], out["X"], "ome")


def _tiff_voxel(tif: tifffile.TiffFile) -> _MetaVoxel:
    page = tif.pages.first
    for meta in (_ome_voxel(tif.ome_metadata if tif.is_ome else None), _imagej_voxel(tif.imagej_metadata, page)):
        if meta.x_um is not None or meta.z_um is not None:
            if meta.x_um is None:  # z from ImageJ spacing, in-plane from vendor tags
                plane = tiff_page_pixel_size(page, tif.imagej_metadata)
                return _MetaVoxel(meta.z_um, plane.value_um, plane.value_um, f"{meta.source}+{plane.source}")
            return meta
    plane = tiff_page_pixel_size(page, tif.imagej_metadata)
    return _MetaVoxel(None, plane.value_um, plane.value_um, plane.source)


def resolve_voxel_size(
    meta: _MetaVoxel, voxel_size_um: float | Sequence[float] | None, slice_spacing_um: float | None
) -> VoxelSize:
    """Combine the file's calibration with the user's settings (see the module docstring).

    Raises
    ------
    StackError
        When a size is missing, not positive or not finite.
    """
    if voxel_size_um is not None:
        values = [float(voxel_size_um)] * 3 if np.isscalar(voxel_size_um) else [float(v) for v in voxel_size_um]
        if len(values) != 3:
            raise StackError(f"voxel_size_um must be [z, y, x] (or one number), got {voxel_size_um!r}")
        z, y, x = values
        source = "override"
    else:
        z, y, x = meta.z_um, meta.y_um, meta.x_um
        source = meta.source
        if slice_spacing_um is not None:
            z = float(slice_spacing_um)
            source = f"{meta.source}+slice_spacing_um"
        if x is None or y is None:
            raise StackError(
                "the in-plane pixel size is not in the file's metadata: pass voxel_size_um=[z,y,x] (µm)"
            )
        if z is None:
            raise StackError(
                f"the slice spacing is not in the file's metadata (in-plane {x:g} µm from {meta.source}); "
                "pass slice_spacing_um=... or voxel_size_um=[z,y,x] (µm); FIB-SEM slices are usually "
                "thicker than the in-plane pixel"
            )
    for name, v in zip("zyx", (z, y, x)):
        if not (math.isfinite(v) and v > 0):
            raise StackError(f"voxel size {name} must be a positive number of µm, got {v!r}")
    return VoxelSize(float(z), float(y), float(x), source)


class Stack:
    """A (Z, Y, X) grey volume read slice range by slice range.

    Attributes
    ----------
    shape : (Z, Y, X); dtype : numpy dtype of `read`; voxel_size : VoxelSize; source : str.
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size: VoxelSize
    source: str = ""

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0 .. z1 - 1`` as a new (z1 - z0, Y, X) array."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open files."""

    def chunks(self, chunk_z: int) -> Iterator[tuple[int, int]]:
        """(z0, z1) ranges of at most `chunk_z` slices covering the stack, in order."""
        n = self.shape[0]
        step = max(1, int(chunk_z))
        for z0 in range(0, n, step):
            yield z0, min(z0 + step, n)

    def _check_range(self, z0: int, z1: int) -> None:
        if not 0 <= z0 <= z1 <= self.shape[0]:
            raise IndexError(f"slice range {z0}:{z1} outside a stack of {self.shape[0]} slices")

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayStack(Stack):
    """An in-memory (or memory-mapped) array as a stack: generated data, tests."""

    def __init__(self, volume: np.ndarray, voxel_size: VoxelSize, source: str = "array") -> None:
        volume = np.asarray(volume) if not isinstance(volume, np.memmap) else volume
        if volume.ndim != 3:
            raise StackError(f"a stack must be 3-D (Z, Y, X), got shape {volume.shape}")
        self._volume = volume
        self.shape = tuple(int(s) for s in volume.shape)
        self.dtype = volume.dtype
        self.voxel_size = voxel_size
        self.source = source

    def read(self, z0: int, z1: int) -> np.ndarray:
        self._check_range(z0, z1)
        return np.array(self._volume[z0:z1])


def _natural_key(path: Path) -> list:
    # slice_2 before slice_10: numbered slices are rarely zero-padded.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _squeeze_axes(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], str]:
    kept = [(n, a) for n, a in zip(shape, axes) if n != 1 or a in "YX"]
    return tuple(n for n, _ in kept), "".join(a for _, a in kept)


class TiffStack(Stack):
    """A multi-page TIFF: memory-mapped when uncompressed and contiguous, else page by page."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.source = str(self.path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as exc:  # noqa: BLE001 - tifffile raises struct, index and value errors on cut files
            why = f"{type(exc).__name__}: {exc}"
            raise StackError(f"{self.path}: not a readable TIFF, truncated or corrupt ({why})") from exc
        try:
            self._setup()
        except StackError:
            self._tif.close()
            raise
        except Exception as exc:  # noqa: BLE001
            self._tif.close()
            why = f"{type(exc).__name__}: {exc}"
            raise StackError(f"{self.path}: unreadable stack, truncated or corrupt ({why})") from exc

    def _setup(self) -> None:
        tif = self._tif
        if not tif.series:
            raise StackError(f"{self.path}: the TIFF has no image data")
        series = tif.series[0]
        _check_complete(tif, series, self.path)
        if len(tif.series) > 1 and not tif.is_ome:
            shapes = ", ".join(str(tuple(s.shape)) for s in tif.series[:4])
            raise StackError(
                f"{self.path}: pages differ in shape or type ({shapes}); a stack needs equal slices"
            )
        shape, axes = _squeeze_axes(tuple(series.shape), series.axes)
        self._samples = axes.endswith("S") and shape[-1] in (3, 4)
        if axes.endswith("S") and not self._samples:
            raise StackError(f"{self.path}: unsupported samples axis in {axes} {shape}")
        plane = shape[-3:] if self._samples else shape[-2:]
        lead = shape[: len(shape) - len(plane)]
        if len(lead) == 0:
            raise StackError(f"{self.path}: a single 2-D image, not a stack of slices")
        if len(lead) > 1:
            raise StackError(
                f"{self.path}: more than one non-spatial axis ({axes} {shape}); "
                "split channels or time points into separate stacks first"
            )
        self._n = int(lead[0])
        self._plane = tuple(int(v) for v in plane)
        self.shape = (self._n, self._plane[0], self._plane[1])
        self.voxel_meta = _tiff_voxel(tif)
        self._mm: np.memmap | None = None
        if series.dataoffset is not None:
            try:
                self._mm = tifffile.memmap(self.path, series=0, mode="r").reshape((self._n, *self._plane))
            except (ValueError, OSError):
                self._mm = None
        probe = self._frames(0, 1)
        self.dtype = probe.dtype

    def _frames(self, z0: int, z1: int) -> np.ndarray:
        if self._mm is not None:
            raw = np.array(self._mm[z0:z1])
            release_pages(self._mm)  # mapped pages of earlier chunks leave RSS
        else:
            try:
                raw = self._tif.asarray(key=range(z0, z1), series=0)
            except (ValueError, OSError, IndexError) as exc:
                raise StackError(f"{self.path}: cannot read slices {z0}-{z1 - 1} ({exc}); truncated file?") from exc
            raw = raw.reshape((z1 - z0, *self._plane))
        if self._samples:
            return np.stack([to_grey(s) for s in raw]) if len(raw) else raw[..., 0]
        return raw

    def read(self, z0: int, z1: int) -> np.ndarray:
        self._check_range(z0, z1)
        return self._frames(z0, z1)

    def close(self) -> None:
        self._mm = None
        self._tif.close()


def _check_complete(tif: tifffile.TiffFile, series: Any, path: Path) -> None:
    """Refuse a TIFF whose header promises more data than the file holds."""
    size = path.stat().st_size
    plane = int(np.prod(series.shape[-2:]))
    declared = None
    if tif.is_imagej and tif.imagej_metadata:
        declared = int(tif.imagej_metadata.get("images", 0)) or None
    elif tif.is_shaped and tif.shaped_metadata:
        shape = tif.shaped_metadata[0].get("shape")
        if shape:
            declared = int(np.prod(shape)) // max(plane, 1)
    held = int(np.prod(series.shape)) // max(plane, 1)
    if tif.is_imagej or tif.is_shaped:
        # tifffile falls back to fewer pages (with a log message) when the data is cut short.
        if declared is not None and held < declared:
            raise StackError(
                f"{path}: truncated or corrupt: the header declares {declared} slices, the file holds {held}"
            )
    if series.dataoffset is not None:
        end = int(series.dataoffset) + int(series.nbytes)
        if end > size:
            raise StackError(f"{path}: truncated: slice data runs to byte {end}, the file has {size} bytes")
        return
    for page in tif.pages:
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        if offsets and max(o + c for o, c in zip(offsets, counts)) > size:
            raise StackError(f"{path}: truncated: page {page.index} ends past the end of the file ({size} bytes)")


class FolderStack(Stack):
    """A folder of 2-D slice files (TIFF, PNG, JPEG), in natural name order."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.source = str(self.folder)
        files = sorted(
            (f for f in self.folder.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES),
            key=_natural_key,
        )
        if not files:
            raise StackError(f"{self.folder}: no slice images (.tif, .png, .jpg) in the folder")
        if len(files) < 2:
            raise StackError(f"{self.folder}: one slice image only; a stack needs at least two")
        self.files = files
        first = self._slice(0)
        self.dtype = first.dtype
        self.shape = (len(files), int(first.shape[0]), int(first.shape[1]))
        self._check_headers()
        self.voxel_meta = _MetaVoxel()
        if files[0].suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(files[0]) as tif:
                self.voxel_meta = _tiff_voxel(tif)
        else:
            from fracscope.io.read import read_pixel_size

            plane = read_pixel_size(files[0])
            self.voxel_meta = _MetaVoxel(None, plane.value_um, plane.value_um, plane.source)

    def _check_headers(self) -> None:
        """Shapes, types and page counts from headers only, so a bad slice fails before hours of work."""
        from PIL import Image

        want_shape, want_dtype = self.shape[1:], None
        for f in self.files:
            dtype = None
            try:
                if f.suffix.lower() in TIFF_SUFFIXES:
                    with tifffile.TiffFile(f) as tif:
                        if len(tif.pages) > 1:
                            raise StackError(f"{f}: a multi-page file inside a folder of slices")
                        shape = tuple(tif.pages.first.shape[:2])
                        dtype = tif.pages.first.dtype
                else:
                    with Image.open(f) as im:
                        shape = (im.height, im.width)
            except (tifffile.TiffFileError, OSError, ValueError) as exc:
                if isinstance(exc, StackError):
                    raise
                raise StackError(f"{f}: not a readable image ({exc})") from exc
            if shape != want_shape:
                raise StackError(
                    f"{f}: slice is {shape[0]} x {shape[1]} px, but {self.files[0].name} is "
                    f"{want_shape[0]} x {want_shape[1]} px; all slices need the same size"
                )
            want_dtype = dtype if want_dtype is None else want_dtype
            if dtype is not None and dtype != want_dtype:
                raise StackError(
                    f"{f}: slice type is {dtype}, but {self.files[0].name} is {want_dtype}; "
                    "all slices need the same type"
                )

    def _slice(self, z: int) -> np.ndarray:
        f = self.files[z]
        try:
            pages = read_image_pages(f)
        except (ValueError, OSError) as exc:
            raise StackError(f"{f}: cannot read slice {z} ({exc})") from exc
        if len(pages) != 1:
            raise StackError(f"{f}: a multi-page file inside a folder of slices")
        return pages[0].pixels

    def read(self, z0: int, z1: int) -> np.ndarray:
        self._check_range(z0, z1)
        out = np.empty((z1 - z0, *self.shape[1:]), self.dtype)
        for i, z in enumerate(range(z0, z1)):
            s = self._slice(z)
            if s.shape != self.shape[1:] or s.dtype != self.dtype:
                raise StackError(
                    f"{self.files[z]}: slice is {s.shape} {s.dtype}, but {self.files[0].name} is "
                    f"{self.shape[1:]} {self.dtype}; all slices need the same size and type"
                )
            out[i] = s
        return out


def open_stack(
    path: str | Path,
    voxel_size_um: float | Sequence[float] | None = None,
    slice_spacing_um: float | None = None,
) -> Stack:
    """Open a multi-page TIFF or a folder of slices for chunked reading.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff`` stack or a folder of slice images.
    voxel_size_um : [z, y, x] or float, optional
        Overrides the metadata (µm).
    slice_spacing_um : float, optional
        The z spacing (µm) when the file has the in-plane size only, or to replace its z.

    Returns
    -------
    Stack
        With ``voxel_size`` resolved; close it (or use it as a context manager).

    Raises
    ------
    StackError
        For a missing, empty, truncated or inconsistent stack, or an unknown voxel size.
    """
    p = Path(path)
    if not p.exists():
        raise StackError(f"{p}: no such file or folder")
    if p.is_dir():
        stack: Stack = FolderStack(p)
    elif p.suffix.lower() in TIFF_SUFFIXES:
        stack = TiffStack(p)
    else:
        raise StackError(f"{p}: a stack is a multi-page TIFF or a folder of slices, not {p.suffix!r}")
    try:
        stack.voxel_size = resolve_voxel_size(stack.voxel_meta, voxel_size_um, slice_spacing_um)
    except StackError:
        stack.close()
        raise
    return stack
