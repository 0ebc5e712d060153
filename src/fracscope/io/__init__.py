"""Read SEM image files and their pixel size; write TIFFs; memory-mapped label arrays.

`iter_images` expands files, folders and globs and yields one `SEMImage` per page (or
a `ReadFailure` per bad file); `read_image_pages` reads one file; the pixel size comes
from an override, FEI, Zeiss, TESCAN, ImageJ/TIFF-resolution tags, a Hitachi or JEOL text file
beside the image, a COCO mapping (`fracscope.io.pixel_size`) or, last, the scale bar in the data bar (`fracscope.io.scalebar`),
in that order. `fracscope.io.tiff` writes images, label maps and
volumes with their pixel size, every writer as ``(path, array, pixel size, ...)``;
`fracscope.io.memmap` holds the disk-backed label arrays of tiled detection and pores3d.
"""

from fracscope.io.databar import crop_data_bar, find_data_bar
from fracscope.io.memmap import open_label_memmap, release_pages
from fracscope.io.pixel_size import PixelSize
from fracscope.io.prefetch import prefetch
from fracscope.io.read import (
    SUPPORTED_SUFFIXES,
    FoundFiles,
    ReadOptions,
    find_image_files,
    group_of,
    iter_images,
    list_image_files,
    load_file,
    read_image_pages,
    read_pixel_size,
    relative_source,
    to_grey,
)
from fracscope.io.tagged import SEMTags, write_sem_tiff
from fracscope.io.tiff import write_image_tiff, write_label_tiff, write_volume_tiff
from fracscope.types import ReadFailure

__all__ = [
    "SUPPORTED_SUFFIXES",
    "FoundFiles",
    "PixelSize",
    "ReadFailure",
    "ReadOptions",
    "SEMTags",
    "crop_data_bar",
    "find_data_bar",
    "find_image_files",
    "group_of",
    "iter_images",
    "list_image_files",
    "relative_source",
    "load_file",
    "open_label_memmap",
    "prefetch",
    "read_image_pages",
    "read_pixel_size",
    "release_pages",
    "to_grey",
    "write_image_tiff",
    "write_label_tiff",
    "write_sem_tiff",
    "write_volume_tiff",
]
