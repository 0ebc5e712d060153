"""Read SEM image files and their pixel size.

`iter_images` expands files, folders and globs and yields one `SEMImage` per page (or
a `ReadFailure` per bad file); `read_image_pages` reads one file; the pixel size comes
from an override, FEI, Zeiss, ImageJ/TIFF-resolution tags or a COCO mapping, in that
order (`fracscope.io.pixel_size`).
"""

from fracscope.io.databar import crop_data_bar, find_data_bar
from fracscope.io.pixel_size import PixelSize
from fracscope.io.prefetch import prefetch
from fracscope.io.read import (
    SUPPORTED_SUFFIXES,
    ReadFailure,
    ReadOptions,
    group_of,
    iter_images,
    list_image_files,
    load_file,
    read_image_pages,
    read_pixel_size,
    to_grey,
)
from fracscope.io.tagged import SEMTags, write_sem_tiff

__all__ = [
    "SUPPORTED_SUFFIXES",
    "PixelSize",
    "ReadFailure",
    "ReadOptions",
    "SEMTags",
    "crop_data_bar",
    "find_data_bar",
    "group_of",
    "iter_images",
    "list_image_files",
    "load_file",
    "prefetch",
    "read_image_pages",
    "read_pixel_size",
    "to_grey",
    "write_sem_tiff",
]
