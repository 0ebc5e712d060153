"""Review material: contact sheets of sampled particles per class, and the low-confidence list.

A fixed-size sample per class (the particles of lowest seeded rank) keeps memory bounded however
many particles arrive, and does not depend on the order images arrive in; each kept particle is stored as a small uint8 RGB thumbnail, cut from the
source image at its own resolution (not the model's resized crop) with its crack pixels drawn,
so a reviewer can check the class against the cracks the measurements counted.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from fracscope.report.options import ReportOptions
from fracscope.report.overlay import CLASS_RGB, CRACK_RGB, any_pool, inner_edges, normalise_to_uint8
from fracscope.report.tables import PARTICLES_CSV, PROB_COLUMNS
from fracscope.types import CLASS_NAMES, ImageResult, ParticleResult, Phase

REVIEW_DIR = "review"
LOW_CONFIDENCE_CSV = "low_confidence.csv"
THUMB_PX = 160
#: Context around the particle's box in a thumbnail, as a fraction of the box's longer side.
THUMB_MARGIN = 0.1
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


def _square_window(bbox: tuple[int, int, int, int], margin: float) -> tuple[int, int, int]:
    """(row0, col0, side) of a square around the box, centred on it, with `margin` of its longer side
    on every edge; it may reach beyond the image."""
    r0, c0, r1, c1 = bbox
    side = max(r1 - r0, c1 - c0)
    side += 2 * math.ceil(margin * side)
    return (r0 + r1 - side) // 2, (c0 + c1 - side) // 2, side


def _cut(a: np.ndarray, row0: int, col0: int, side: int) -> np.ndarray:
    """The (side, side) window of a 2-D map at (row0, col0), 0 where it leaves the map."""
    out = np.zeros((side, side), dtype=a.dtype)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + side, a.shape[0]), min(col0 + side, a.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = a[r0:r1, c0:c1]
    return out


def make_thumbnail(result: ImageResult, particle: ParticleResult, size: int = THUMB_PX) -> np.ndarray:
    """RGB uint8 (size, size) thumbnail of a particle cut from the source image: its outline in the
    class colour, its crack pixels (`result.phases`) in the overlay's crack colour.

    The window is a square around the particle's box (plus `THUMB_MARGIN`) at the image's own
    resolution, contrast-stretched on itself (black beyond the image's edge) and resized only to
    `size`; cracks are pooled so a 1-px crack stays at least one thumbnail pixel wide.
    """
    row0, col0, side = _square_window(particle.bbox, THUMB_MARGIN)
    h, w = result.instances.shape[:2]
    r0, c0, r1, c1 = max(row0, 0), max(col0, 0), min(row0 + side, h), min(col0 + side, w)
    gray = np.zeros((side, side), np.uint8)
    gray[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = normalise_to_uint8(result.image.pixels[r0:r1, c0:c1])
    own = _cut(result.instances, row0, col0, side) == particle.particle_id
    crack = own & (_cut(result.phases, row0, col0, side) == Phase.CRACK)
    img = Image.fromarray(gray, "L")
    if side != size:
        img = img.resize((size, size), Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR)
    rgb = np.repeat(np.asarray(img)[..., None], 3, axis=2)
    rgb[any_pool(crack, (size, size), size, side)] = CRACK_RGB
    own_small = any_pool(own, (size, size), size, side)
    rgb[inner_edges(own_small.astype(np.uint8))] = CLASS_RGB.get(particle.class_name, (255, 255, 255))
    return rgb


def review_priority(seed: int, stem: str, particle_id: int) -> float:
    """A particle's rank in the review sample, uniform in [0, 1) and fixed by the seed and the particle's
    identity (its image's output stem, unique per page, and its id): the sample is the particles of lowest rank (bottom-k), whatever order images arrive in,
    so a run on one machine and one spread over a cluster show the same particles."""
    key = f"{seed}\0{stem}\0{particle_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64


@dataclass
class ReviewOffer:
    """One image's part in the review sample: its counted particles per class, and thumbnails of
    those ranked low enough to be kept (`ReviewSampler.thresholds` when the offer was made)."""

    counted: dict[str, int]
    candidates: list[tuple[str, float, ReviewTile]]  # (class, rank, tile)


def offer_particles(result: ImageResult, options: ReportOptions,
                    thresholds: Mapping[str, float] | None = None) -> ReviewOffer:
    """The review offer of one image: every particle the class fractions count (`options.counts`),
    with a thumbnail made only for those ranked below their class's threshold (default: all)."""
    counted = {c: 0 for c in CLASS_NAMES}
    candidates = []
    for p in result.particles:
        if p.class_name not in counted or not options.counts(p.touches_border, p.too_small):
            continue
        counted[p.class_name] += 1
        rank = review_priority(options.seed, result.stem, p.particle_id)
        if thresholds is not None and rank >= thresholds.get(p.class_name, 1.0):
            continue  # thumbnails only for particles that can still enter the sample
        prob = float(p.probs[CLASS_NAMES.index(p.class_name)])
        tile = ReviewTile(make_thumbnail(result, p), f"{short_stem(result.stem)} #{p.particle_id}", prob)
        candidates.append((p.class_name, rank, tile))
    return ReviewOffer(counted, candidates)


class ReviewSampler:
    """Seeded sample of particles per class: the `per_class` of lowest `review_priority` (bottom-k).

    The sample depends on the seed and on which particles were offered, not on their order.

    Parameters
    ----------
    per_class : int
        Particles kept per class.
    seed : int
        The rank's seed.
    include_border, include_too_small : bool
        Offer particles cut by the image border / flagged too small. Defaults match the
        report's class fractions, so the sheets show what the statistics count.
    """

    def __init__(self, per_class: int = 48, seed: int = 0, include_border: bool = False,
                 include_too_small: bool = False):
        self.per_class = per_class
        self.options = ReportOptions(count_border_particles=include_border, count_too_small=include_too_small,
                                     seed=seed)
        self.seen: dict[str, int] = {c: 0 for c in CLASS_NAMES}
        self._kept: dict[str, list[tuple[float, ReviewTile]]] = {c: [] for c in CLASS_NAMES}

    @classmethod
    def from_options(cls, options: ReportOptions) -> ReviewSampler:
        return cls(options.review_per_class, options.seed, options.count_border_particles, options.count_too_small)

    @property
    def tiles(self) -> dict[str, list[ReviewTile]]:
        """The kept tiles per class, lowest rank first."""
        return {c: [t for _, t in sorted(kept, key=lambda k: k[0])] for c, kept in self._kept.items()}

    def thresholds(self) -> dict[str, float]:
        """Per class, the rank a particle must beat to enter the sample now (1.0 while it is not full)."""
        return {c: max(r for r, _ in kept) if len(kept) >= self.per_class else 1.0 for c, kept in self._kept.items()}

    def offer(self, result: ImageResult, thresholds: Mapping[str, float] | None = None) -> ReviewOffer:
        """This image's offer (see `offer_particles`), made with this sampler's options."""
        return offer_particles(result, self.options, self.thresholds() if thresholds is None else thresholds)

    def take(self, offer: ReviewOffer) -> None:
        """Count an image's particles and keep those of its candidates that rank among the lowest."""
        for c, n in offer.counted.items():
            self.seen[c] += n
        for c, rank, tile in offer.candidates:
            kept = self._kept[c]
            if len(kept) < self.per_class:
                kept.append((rank, tile))
                continue
            worst = max(range(len(kept)), key=lambda i: kept[i][0])
            if rank < kept[worst][0]:
                kept[worst] = (rank, tile)

    def add(self, result: ImageResult) -> None:
        """Offer every counted particle of an image and keep what ranks low enough."""
        self.take(self.offer(result))

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
        title = (f"{class_name.replace('_', ' ')}: {len(tiles)} of {self.seen[class_name]} counted particles "
                 "(random sample); magenta: crack pixels")
        title_w = math.ceil(title_font.getlength(title)) + 2 * pad  # a sheet of few cells is widened, not clipped
        width = max(cols * cell_w + pad, title_w)
        sheet = Image.new("RGB", (width, title_h + rows * cell_h + pad), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        draw.text((pad, 5), title, fill=(0, 0, 0), font=title_font)
        if not tiles:
            draw.text((pad, title_h + 10), "no counted particles of this class", fill=(90, 90, 90), font=font)
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
