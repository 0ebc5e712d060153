"""Mosaics analysed tile by tile: every stage, not only detection, holds one tile at a time.

With ``detect=tiled`` an image larger than one tile of its `TileGrid` is analysed as tiles: each
overlapping tile window is detected by the inner detector, keeps the particles it owns by the rule of
`fracscope.detect.tiling` (whole in the window, off its interior edges, bounding-box centre in its
core), and runs the phase model and the measurements on that window alone (`analyse_tile`). The
pieces are then put together in tile raster order (`assemble`), with the particle ids `detect_tiled`
gives. A tile is a unit of work of its own: ``executor=dask`` sends each to a worker.

Differences from detecting the whole image first: the phase model's grey-level normalisation and the
``segmenter=threshold`` Otsu threshold are the tile's, and an object larger than the overlap (no tile
sees it whole) is left out with a warning instead of stitched from pieces: choose ``detect.overlap_px``
above the largest particle (the default covers a 20 µm section).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fracscope.analysis import AnalysisSettings, Models, StageTimes, measure_particles, predict_particles
from fracscope.crop import crop_particles
from fracscope.detect import Detector, build_detector, detector_factory
from fracscope.detect.tiling import OversizedObjectWarning, Tile, TiledDetector, TileGrid, owned_objects, tile_grid
from fracscope.locate import LocatedParticles, detect_in_dark_pore_contrast, with_estimated_scale
from fracscope.polarity import POLARITIES
from fracscope.types import ImageResult, ParticleResult, SEMImage


@dataclass
class TilePiece:
    """One tile's particles: maps of its window (particle ids 1..n_objects, some unused where the size
    rule dropped a trimmed section) and the particles with boxes in window pixels."""

    tile: Tile
    instances: np.ndarray
    phases: np.ndarray
    particles: list[ParticleResult]
    n_objects: int
    n_oversized: int
    seconds: dict[str, float] = field(default_factory=dict)
    pore_polarity: str = "dark"  # the tile's, as `fracscope.locate.detect_in_dark_pore_contrast` decided it


@dataclass
class MosaicPage:
    """An image that is analysed as tiles (it passes the detect-ahead stage untouched)."""

    image: SEMImage
    grid: TileGrid


def mosaic_detector(detect: Mapping[str, Any]) -> TiledDetector | None:
    """The run's detector when it is tiled (``detect=tiled``), built here; None for any other."""
    factory, _ = detector_factory(detect)
    if isinstance(factory, type) and issubclass(factory, TiledDetector):
        return build_detector(detect)
    return None


def as_mosaic(item: Any, detector: Detector | None, pore_polarity: str) -> Any:
    """`item` as a `MosaicPage` when it is an image larger than one tile of a tiled detector, else as is
    (any other detector, or None, leaves it as it is). `pore_polarity` is the run's setting."""
    if detector is None or not isinstance(item, SEMImage):
        return item
    if mosaic_grid(item, detector) is None:
        return item
    # An image without a pixel size gets one estimate for the whole mosaic (not one per tile), made in the
    # contrast its pores need (its tiles carry it and are not estimated again), and the grid's overlap follows it.
    item = with_estimated_scale(item, detector, pore_polarity)
    grid = mosaic_grid(item, detector)
    return item if grid is None else MosaicPage(item, grid)


def mosaic_grid(image: SEMImage, detector: Detector) -> TileGrid | None:
    """The tile grid `image` is analysed on, or None when it is analysed whole (a detector that is not
    tiled, or an image that fits one tile)."""
    if not isinstance(detector, TiledDetector):
        return None
    grid = tile_grid(image.pixels.shape, detector.tile_px, detector.overlap_px, image.working_pixel_size_um)
    return grid if len(grid) > 1 else None


def tile_window(image: SEMImage, tile: Tile) -> SEMImage:
    """The tile's window of `image` as an image of its own (pixels copied: a memmap is read here)."""
    return dataclasses.replace(image, pixels=np.array(image.pixels[tile.slices]))


def analyse_tile(window: SEMImage, tile: Tile, detector: Detector, models: Models, settings: AnalysisSettings,
                 stem: str, group: str) -> TilePiece:
    """Detect, keep what this tile owns, run the models and measure, all on the tile's window."""
    times = StageTimes()
    t = time.perf_counter()
    found = detect_in_dark_pore_contrast(window, detector, settings.pore_polarity)
    kept, n_oversized = owned_objects(tile, found.instances)
    instances = np.zeros(found.instances.shape, np.uint32)
    for new_id, (label, box) in enumerate(kept, start=1):
        instances[box][found.instances[box] == label] = new_id
    t = times.add("detect", t)
    located = LocatedParticles(found.image, instances, [], {}, detector.min_diameter_um, None, found.pore_polarity,
                               found.network_pixels)
    if models.crop_spec is not None:
        located.crops = crop_particles(located.pixels_for_networks, instances, models.crop_spec)
    times.add("crop", t)
    result = measure_particles(predict_particles(located, stem, group, models, settings, times), settings, times)
    particles = [dataclasses.replace(p, crop=None) for p in result.particles]
    return TilePiece(tile, result.instances, result.phases, particles, len(kept), n_oversized, dict(times.seconds),
                     result.pore_polarity)


def assemble(image: SEMImage, pieces: Sequence[TilePiece], stem: str, group: str,
             pixel_size_range_um: tuple[float, float] | None = None) -> ImageResult:
    """The image's result from its tiles' pieces, in tile raster order: ids numbered on from tile to
    tile, boxes moved to image pixels; where two tiles' particles claim a pixel the earlier keeps it."""
    instances = np.zeros(image.pixels.shape, np.uint32)
    phases = np.zeros(image.pixels.shape, np.uint8)
    particles: list[ParticleResult] = []
    offset = 0
    for piece in sorted(pieces, key=lambda p: p.tile.index):
        r0, c0 = piece.tile.bbox[:2]
        block, phase_block = instances[piece.tile.slices], phases[piece.tile.slices]
        free = (piece.instances > 0) & (block == 0)
        block[free] = piece.instances[free] + offset
        phase_block[free] = piece.phases[free]
        for p in piece.particles:
            b0, b1, b2, b3 = p.bbox
            particles.append(dataclasses.replace(p, particle_id=p.particle_id + offset,
                                                 bbox=(b0 + r0, b1 + c0, b2 + r0, b3 + c0)))
        offset += piece.n_objects
    n_oversized = sum(p.n_oversized for p in pieces)
    if n_oversized:
        warnings.warn(
            f"{image.source}: {n_oversized} object piece(s) larger than the tile overlap were left out; "
            "raise detect.overlap_px above the largest particle's diameter in pixels",
            OversizedObjectWarning, stacklevel=2,
        )
    # The image's pore polarity: that of the tiles holding most of its particles (each tile decides its own).
    votes = {p: sum(len(piece.particles) for piece in pieces if piece.pore_polarity == p) for p in POLARITIES}
    polarity = "bright" if votes["bright"] > votes["dark"] else "dark"
    return ImageResult(image=image, stem=stem, group=group, instances=instances, phases=phases, particles=particles,
                       pixel_size_range_um=pixel_size_range_um, pore_polarity=polarity)


def analyse_mosaic(
    page: MosaicPage,
    detector: TiledDetector,
    models: Models,
    settings: AnalysisSettings,
    stem: str,
    group: str,
    times: StageTimes,
    run_tiles: Callable[[Iterator[tuple[SEMImage, Tile]]], list[TilePiece]] | None = None,
) -> ImageResult:
    """`page` analysed tile by tile; `run_tiles` maps the (window, tile) pairs, made one at a time, to pieces (default: here,
    one after the other; ``executor=dask`` sends them to workers)."""
    def here(jobs):
        return [analyse_tile(w, tile, detector.detector, models, settings, stem, group) for w, tile in jobs]

    pieces = (run_tiles or here)((tile_window(page.image, tile), tile) for tile in page.grid)
    for piece in pieces:
        for stage, seconds in piece.seconds.items():
            times.seconds[stage] = times.seconds.get(stage, 0.0) + seconds
    return assemble(page.image, pieces, stem, group, models.pixel_size_range_um)


__all__ = ["MosaicPage", "TilePiece", "analyse_mosaic", "analyse_tile", "as_mosaic", "assemble", "mosaic_detector",
           "mosaic_grid", "tile_window"]
