"""Tests of fracscope.io's writers (fracscope.io.tiff) and label memmaps (fracscope.io.memmap)."""

import inspect

import numpy as np
import pytest
import tifffile

import fracscope.io.tiff
from fracscope.io import (
    open_label_memmap,
    read_image_pages,
    read_pixel_size,
    release_pages,
    write_image_tiff,
    write_label_tiff,
    write_volume_tiff,
)


def _labels(shape=(70, 90), top=70_000):
    """A label map whose ids do not fit 16 bits."""
    lab = np.zeros(shape, np.uint32)
    lab[5:30, 10:40] = 1
    lab[40:60, 50:80] = top
    return lab


def test_every_writer_takes_the_path_first_then_the_array():
    for name in ("write_image_tiff", "write_label_tiff", "write_volume_tiff"):
        params = list(inspect.signature(getattr(fracscope.io.tiff, name)).parameters)
        assert params[0] == "path" and params[1] in ("pixels", "labels", "slices"), (name, params)


@pytest.mark.parametrize("pixel_size_um", [None, 0.05])
def test_label_tiff_round_trips_as_uint32_with_its_pixel_size(tmp_path, pixel_size_um):
    lab = _labels()
    path = write_label_tiff(tmp_path / "l.tif", lab.astype(np.int64), pixel_size_um)
    back = tifffile.imread(path)
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, lab)
    size = read_pixel_size(path)
    if pixel_size_um is None:
        assert size.value_um is None
    else:
        assert size.value_um == pytest.approx(pixel_size_um)


def test_label_tiff_as_uint16(tmp_path):
    lab = _labels(top=65_535)
    back = tifffile.imread(write_label_tiff(tmp_path / "l16.tif", lab, dtype=np.uint16))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, lab)


def test_tiled_label_tiff_from_a_memmap_equals_the_one_piece_write(tmp_path):
    lab = _labels((300, 260))
    mm = open_label_memmap(tmp_path / "l.npy", lab.shape)
    assert mm.dtype == np.uint32 and not mm.any()
    mm[:] = lab
    release_pages(mm)  # flushed: the file has the labels
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy", mmap_mode="r"), lab)
    path = write_label_tiff(tmp_path / "tiled.tif", mm, 0.02, tile_px=128)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.tilewidth == 128 and page.dtype == np.uint32
        np.testing.assert_array_equal(page.asarray(), lab)
    assert read_pixel_size(path).value_um == pytest.approx(0.02)
    release_pages(lab)  # plain arrays are left alone


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32])
def test_image_tiff_pixel_size_is_read_back(tmp_path, dtype):
    pixels = (np.arange(40 * 50).reshape(40, 50) % 200).astype(dtype)
    path = write_image_tiff(tmp_path / "i.tif", pixels, 0.033, compression="zlib")
    (image,) = read_image_pages(path)
    assert image.pixel_size_um == pytest.approx(0.033)
    # ImageJ holds uint8, uint16 and float32; other types carry a plain TIFF resolution.
    assert image.pixel_size_source == ("imagej" if dtype != np.int32 else "tiff_resolution")
    np.testing.assert_array_equal(tifffile.imread(path), pixels)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_image_tiff_without_pixel_size_is_uncalibrated(tmp_path):
    (image,) = read_image_pages(write_image_tiff(tmp_path / "i.tif", np.zeros((8, 8), np.uint8)))
    assert image.pixel_size_um is None


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_volume_tiff_voxel_size_is_read_back(tmp_path, dtype):
    from fracscope.pores3d import open_stack

    vol = (np.arange(4 * 12 * 16).reshape(4, 12, 16) % 250).astype(dtype)
    path = write_volume_tiff(tmp_path / "v.tif", iter(vol), vol.shape, dtype, (0.02, 0.01, 0.005), "zlib")
    with open_stack(path) as stack:
        assert stack.voxel_size.zyx == pytest.approx((0.02, 0.01, 0.005))
        assert stack.voxel_size.source == ("imagej" if dtype == np.uint16 else "ome")
        np.testing.assert_array_equal(stack.read(0, 4), vol)
