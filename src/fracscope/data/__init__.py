"""Datasets: formats on disk (readers/writers). Training-time pieces live in submodules."""

from fracscope.data.formats import detect_format, read_dataset, write_dataset

__all__ = ["detect_format", "read_dataset", "write_dataset"]
