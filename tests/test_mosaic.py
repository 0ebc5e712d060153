"""Mosaics analysed tile by tile (`fracscope.mosaic`): the particles `detect_tiled` finds, each measured once."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from fracscope.analysis import AnalysisSettings, Models, StageTimes
from fracscope.cli import compose
from fracscope.detect import build_detector
from fracscope.detect.tiling import detect_tiled, owned_objects
from fracscope.io import write_image_tiff
from fracscope.mosaic import MosaicPage, analyse_mosaic, mosaic_detector, mosaic_grid
from fracscope.pipeline import run

TILED = {"_target_": "fracscope.detect.tiling.TiledDetector", "tile_px": 640, "overlap_px": 300,
         "detector": {"_target_": "fracscope.detect.classical.ClassicalDetector"}}


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 1,024 x 1,536 px field at 0.05 µm/px: a grid of 3 x 4 tiles of 640 px (300 px overlap)."""
    from fracscope.synth import load_config, make_field

    item = make_field(load_config("p", overrides=["electrode.field_px=[1024,1536]"]), 5, 0)
    path = tmp_path_factory.mktemp("mosaic") / "mosaic.tif"
    write_image_tiff(path, item.image.pixels, item.image.pixel_size_um)
    return path, item.image


def test_tiles_find_exactly_what_tiled_detection_finds(mosaic):
    _, image = mosaic
    detector = build_detector(TILED)
    grid = mosaic_grid(image, detector)
    assert grid is not None and (grid.n_rows, grid.n_cols) == (3, 4)
    inner = detector.detector
    assert all(owned_objects(t, inner.detect(image.__class__(image.pixels[t.slices], image.pixel_size_um)))[1] == 0
               for t in grid), "the test field should have no particle larger than the overlap"
    settings = AnalysisSettings(trim_rim="none", segmenter="threshold", classify="head")
    result = analyse_mosaic(MosaicPage(image, grid), detector, Models.for_settings(settings), settings, "m", "",
                            StageTimes())
    # Same ids, same pixels: the tiles' owners and their raster-order numbering are detect_tiled's.
    np.testing.assert_array_equal(result.instances, detect_tiled(image, inner, 640, 300))
    ids = [p.particle_id for p in result.particles]
    assert len(ids) == len(set(ids)) > 20
    boxes = ndi.find_objects(result.instances)
    for p in result.particles:  # boxes moved from tile windows to image pixels
        rows, cols = boxes[p.particle_id - 1]
        assert p.bbox == (rows.start, cols.start, rows.stop, cols.stop)


def test_an_image_that_fits_one_tile_or_another_detector_is_analysed_whole(mosaic):
    _, image = mosaic
    assert mosaic_detector({"name": "classical"}) is None
    assert mosaic_grid(image, build_detector({**TILED, "tile_px": 4096})) is None


def test_infer_with_detect_tiled_analyses_tile_by_tile(mosaic, tmp_path):
    path, image = mosaic
    infer = partial(compose, "infer", f"input={path}", "detect=tiled", "detect.tile_px=640", "detect.overlap_px=300",
                    "report.n_boot=20", "progress=false", "detect_workers=0")
    outcome = run(infer(f"output={tmp_path / 'tiles'}"))
    table = pd.read_csv(tmp_path / "tiles" / "particles.csv")
    labels = tifffile.imread(tmp_path / "tiles" / "instances" / "mosaic.tif")
    assert outcome.n_particles == len(table) > 20
    assert set(table["particle_id"]) == set(np.unique(labels[labels > 0]).tolist())
    # One tile as large as the image: the same run analyses it whole; the particle count barely moves.
    whole = run(infer(f"output={tmp_path / 'whole'}", "detect.tile_px=2048"))
    assert abs(whole.n_particles - outcome.n_particles) <= 0.05 * whole.n_particles


def test_a_mosaics_pore_polarity_is_that_of_the_tiles_holding_most_particles():
    from fracscope.detect.tiling import Tile
    from fracscope.mosaic import TilePiece, assemble
    from fracscope.types import ParticleResult, SEMImage

    def piece(col: int, n: int, polarity: str) -> TilePiece:
        tile = Tile((0, col), (0, 10 * col, 10, 10 * col + 10), (0, 10 * col, 10, 10 * col + 10), (0, 0, 0, 0))
        parts = [ParticleResult(i + 1, "intact", (1.0, 0.0, 0.0), False, False, False, (0, 0, 1, 1)) for i in range(n)]
        return TilePiece(tile, np.zeros((10, 10), np.uint32), np.zeros((10, 10), np.uint8), parts, n, 0,
                         pore_polarity=polarity)

    image = SEMImage(pixels=np.zeros((10, 30), np.uint8), pixel_size_um=0.05)
    mostly_bright = [piece(0, 1, "dark"), piece(1, 3, "bright"), piece(2, 0, "dark")]
    assert assemble(image, mostly_bright, "m", "g").pore_polarity == "bright"
    assert assemble(image, [piece(0, 2, "dark"), piece(1, 1, "bright")], "m", "g").pore_polarity == "dark"
    assert assemble(image, [], "m", "g").pore_polarity == "dark"


def _field_without_pixel_size(looks: str, seed: int):
    """A generated 768 x 1,024 px field at 0.07 µm/px (2 x 2 tiles of 640 px), its pixel size dropped."""
    from fracscope.synth import load_config, make_field
    from fracscope.types import SEMImage

    cfg = load_config("p", overrides=["electrode.field_px=[768,1024]", "electrode.pixel_size_um=0.07",
                                      f"imaging.looks=[{looks}]"])
    return SEMImage(make_field(cfg, seed, 0).image.pixels, None)


LEARNED_TILES = {**TILED, "detector": {"_target_": "fracscope.detect.learned.LearnedDetector"}}


def test_a_large_infiltrated_field_without_a_pixel_size_is_estimated_in_dark_pore_contrast():
    """The mosaic's one estimate is made on the folded image (`locate.with_estimated_scale`): 0.0724 µm/px,
    +3 %; on the image as it is, where the detector reads the Pt as particles, it was 0.0825, +18 %."""
    from fracscope.mosaic import as_mosaic

    page = as_mosaic(_field_without_pixel_size("infiltrated", 103), build_detector(LEARNED_TILES), "auto")
    assert isinstance(page, MosaicPage) and page.image.pixel_size_source == "estimated"
    assert page.image.estimated_pixel_size_um == pytest.approx(0.07, rel=0.15)


def test_a_large_dark_pore_field_is_estimated_as_it_is():
    """No fill in the histogram: auto estimates on the image as it is, as dark does (and as before)."""
    from fracscope.mosaic import as_mosaic
    from fracscope.polarity import has_mid_grey_particles

    image = _field_without_pixel_size("", 103)
    assert not has_mid_grey_particles(image.pixels)
    detector = build_detector(LEARNED_TILES)
    estimates = [as_mosaic(image, detector, setting).image.estimated_pixel_size_um for setting in ("auto", "dark")]
    assert estimates[0] == estimates[1] == pytest.approx(0.07, rel=0.15)
