"""Disk-backed arrays with bounded memory: label memmaps and handing mapped pages back to the OS.

Used by tiled detection (`fracscope.detect.tiling`), the streamed label TIFF writer
(`fracscope.io.tiff`) and the 3-D pore analysis (`fracscope.pores3d`), whose inputs and
scratch arrays are larger than memory.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np


def open_label_memmap(path: str | Path, shape: tuple[int, int]) -> np.memmap:
    """A zero-filled uint32 label memmap on disk (a raw ``.npy``), to pass as ``out``.

    The file is a ``.npy``, so ``np.load(path, mmap_mode="r")`` reopens it.
    """
    return np.lib.format.open_memmap(Path(path), mode="w+", dtype=np.uint32, shape=tuple(shape))


def release_pages(array: Any) -> None:
    """Flush a memmap and drop its resident pages, so RSS stays bounded by a tile.

    Pages of a shared file mapping live in the page cache, so dropping them loses
    nothing; private (copy-on-write, ``mode="c"``) maps and plain arrays are left alone.
    """
    if not isinstance(array, np.memmap) or getattr(array, "mode", "c") == "c":
        return
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise"):
        return
    if array.mode != "r":
        array.flush()
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # pragma: no cover - platform without madvise
        pass
