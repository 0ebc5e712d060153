"""Review material: contact sheets of sampled crops per class, and the low-confidence list.

A fixed-size, seeded reservoir per class keeps memory bounded however many
particles arrive; crops are stored as small uint8 RGB thumbnails.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries

from fracscope.report.options import ReportOptions
from fracscope.report.overlay import CLASS_RGB, normalise_to_uint8
from fracscope.report.tables import PARTICLES_CSV, PROB_COLUMNS
from fracscope.types import CLASS_NAMES, ImageResult, ParticleResult

REVIEW_DIR = "review"
LOW_CONFIDENCE_CSV = "low_confidence.csv"
THUMB_PX = 128
LOW_CONFIDENCE_COLUMNS: tuple[str, ...] = (
    "image",
    "page",
    "particle_id",
    "group",
    "class",
    *PROB_COLUMNS,
    "touches_border",
    "too_small",
)


def short_stem(stem: str, width: int = 16) -> str:
    """A caption-sized stem that keeps its start (the group folder) and its end (the file)."""
    if len(stem) <= width:
        return stem
    head = (width - 1) // 2
    return f"{stem[:head]}…{stem[len(stem) - (width - 1 - head):]}"


@dataclass
class ReviewTile:
    """One sampled crop: an RGB thumbnail and its caption."""

    thumb: np.ndarray
    caption: str
    prob: float


def make_thumbnail(particle: ParticleResult, size: int = THUMB_PX) -> np.ndarray | None:
    """RGB uint8 thumbnail of the particle's crop with its mask outline in the class colour."""
    crop = particle.crop
    if crop is None:
        return None
    gray = normalise_to_uint8(crop.image)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    edge = find_boundaries(np.asarray(crop.mask) > 0.5, mode="inner")
    rgb[edge] = CLASS_RGB.get(particle.class_name, (255, 255, 255))
    img = Image.fromarray(rgb, "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img)


class ReviewSampler:
    """Seeded reservoir sample (Algorithm R) of crops per class.

    Parameters
    ----------
    per_class : int
        Crops kept per class.
    seed : int
        The same particles in the same order give the same sample.
    include_border, include_too_small : bool
        Offer particles cut by the image border / flagged too small. Defaults match the
        report's class fractions, so the sheets show what the statistics count.
    """

    def __init__(self, per_class: int = 48, seed: int = 0, include_border: bool = False,
                 include_too_small: bool = False):
        self.per_class = per_class
        self.include_border = include_border
        self.include_too_small = include_too_small
        self._counting = ReportOptions(count_border_particles=include_border, count_too_small=include_too_small)
        self._rng = np.random.default_rng(seed)
        self.seen: dict[str, int] = {c: 0 for c in CLASS_NAMES}
        self.tiles: dict[str, list[ReviewTile]] = {c: [] for c in CLASS_NAMES}

    def add(self, result: ImageResult) -> None:
        """Offer every counted particle of an image that has a crop."""
        for p in result.particles:
            if p.crop is None or p.class_name not in self.seen:
                continue
            if not self._counting.counts(p.touches_border, p.too_small):
                continue
            self.seen[p.class_name] += 1
            n, tiles = self.seen[p.class_name], self.tiles[p.class_name]
            if len(tiles) < self.per_class:
                slot = len(tiles)
            else:
                slot = int(self._rng.integers(0, n))
                if slot >= self.per_class:
                    continue
            # Thumbnails are made only for kept crops: cheap even with many particles.
            thumb = make_thumbnail(p)
            prob = float(p.probs[CLASS_NAMES.index(p.class_name)])
            tile = ReviewTile(thumb, f"{short_stem(result.stem)} #{p.particle_id}", prob)
            if slot == len(tiles):
                tiles.append(tile)
            else:
                tiles[slot] = tile

    def write_sheets(self, output_dir: str | os.PathLike, columns: int = 8) -> list[Path]:
        """Write `review/contact_<class>.png` for every class; returns the paths."""
        out = Path(output_dir) / REVIEW_DIR
        out.mkdir(parents=True, exist_ok=True)
        return [self._sheet(c, out / f"contact_{c}.png", columns) for c in CLASS_NAMES]

    def _sheet(self, class_name: str, path: Path, columns: int) -> Path:
        tiles = self.tiles[class_name]
        font = ImageFont.load_default(size=11)
        title_font = ImageFont.load_default(size=14)
        cap_h, pad, title_h = 28, 4, 26
        cols = max(1, min(columns, len(tiles)))
        rows = max(1, math.ceil(len(tiles) / cols))
        cell_w, cell_h = THUMB_PX + pad, THUMB_PX + cap_h + pad
        width = max(cols * cell_w + pad, 420)
        sheet = Image.new("RGB", (width, title_h + rows * cell_h + pad), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        title = f"{class_name.replace('_', ' ')}: {len(tiles)} of {self.seen[class_name]} counted particles (random sample)"
        draw.text((pad, 5), title, fill=(0, 0, 0), font=title_font)
        if not tiles:
            draw.text((pad, title_h + 10), "no particles of this class with crops", fill=(90, 90, 90), font=font)
        for i, t in enumerate(tiles):
            x = pad + (i % cols) * cell_w
            y = title_h + (i // cols) * cell_h
            if t.thumb is not None:
                sheet.paste(Image.fromarray(t.thumb), (x, y))
            draw.text((x, y + THUMB_PX + 1), t.caption, fill=(0, 0, 0), font=font)
            draw.text((x, y + THUMB_PX + 13), f"p = {t.prob:.2f}", fill=(0, 0, 0), font=font)
        sheet.save(path)
        return path


def write_low_confidence(output_dir: str | os.PathLike, chunksize: int = 200_000) -> Path:
    """Write `review/low_confidence.csv` from particles.csv (chunked, bounded memory)."""
    out_dir = Path(output_dir)
    path = out_dir / REVIEW_DIR / LOW_CONFIDENCE_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    src = out_dir / PARTICLES_CSV
    header_written = False
    if src.exists() and src.stat().st_size > 0:
        cols = list(LOW_CONFIDENCE_COLUMNS)
        reader = pd.read_csv(
            src, usecols=[*cols, "low_confidence"], dtype=str, keep_default_na=False, chunksize=chunksize
        )
        for chunk in reader:
            sel = chunk[chunk["low_confidence"] == "True"]
            sel[cols].to_csv(path, mode="a" if header_written else "w", header=not header_written, index=False)
            header_written = True
    if not header_written:
        pd.DataFrame(columns=list(LOW_CONFIDENCE_COLUMNS)).to_csv(path, index=False)
    return path
