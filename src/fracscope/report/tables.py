"""Streaming per-particle, per-image and error tables (CSV while running, Parquet at close).

Rows are appended image by image and flushed, so a run that dies keeps every image
it finished. `images.csv` is written last for each image and is the commit record:
an image is done when its row is there (`done_images`). On resume, particle rows of
images without that record (a run killed half-way through an image) are dropped.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from fracscope.classify import HEAD_FEATURES, SECTION_FEATURES
from fracscope.measure import measure_particle
from fracscope.report.quality import QUALITY_COLUMNS, image_quality
from fracscope.types import CLASS_NAMES, ImageResult, ParticleResult

PARTICLES_CSV = "particles.csv"
PARTICLES_PARQUET = "particles.parquet"
IMAGES_CSV = "images.csv"
ERRORS_CSV = "errors.csv"
#: errors.csv rows whose `error` starts with this are files passed over (unsupported type), not failures.
SKIPPED_PREFIX = "skipped: "

PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{name}" for name in CLASS_NAMES)
#: The section net's and the crop model's class probabilities (empty where the network did not run): evidence
#: the class rule reads, kept so that a lab can refit the rule on its own labels (`fracscope.calibrate`).
NETWORK_PROB_COLUMNS: tuple[str, ...] = SECTION_FEATURES + HEAD_FEATURES
BBOX_COLUMNS: tuple[str, ...] = ("bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1")
KEY_COLUMNS: tuple[str, ...] = (
    "image",
    "page",
    "particle_id",
    "group",
    "class",
    *PROB_COLUMNS,
    "low_confidence",
    "touches_border",
    "too_small",
    "pixel_size_um",
    "pixel_size_source",
    "length_unit",
    *BBOX_COLUMNS,
)
IMAGE_COLUMNS: tuple[str, ...] = (
    "image",
    "page",
    "stem",
    "group",
    "height_px",
    "width_px",
    "pixel_size_um",
    "pixel_size_source",
    "length_unit",
    "pixel_size_estimate_um",  # estimated from the image when none was known (lengths stay in px)
    "n_particles",
    "n_touches_border",
    "n_too_small",
    "n_low_confidence",
    *(f"n_{name}" for name in CLASS_NAMES),
    # The resume key: the same file named another way (relative, absolute, a link) is the same
    # image, and a file changed since (size or mtime) is not.
    "source_path",
    "source_size_bytes",
    "source_mtime_ns",
    # Which images to check first (`fracscope.report.quality`); appended, so older columns keep their place.
    *QUALITY_COLUMNS,
    "pore_polarity",  # dark (empty) or bright (Pt/resin-filled) pores: set, or decided per image (auto)
    "n_curtain_streaks",  # crack lines made solid as milling curtains (fracscope.curtains)
    "shading",  # the particles' grey-level drift across the image, as a fraction (fracscope.illumination)
    "illumination_evened",  # True: evened out and detected again (even_illumination, shading over the limit)
    "edge_contrast",  # the outline bands' brightness over the solid under them (fracscope.edges: SE-like edges)
)
ERROR_COLUMNS: tuple[str, ...] = ("image", "page", "error")

_STRING_COLUMNS = {"image", "stem", "group", "class", "pixel_size_source", "length_unit", "error", "quality_flags",
                   "pore_polarity"}
_INT_COLUMNS = {"page", "particle_id", *BBOX_COLUMNS, "height_px", "width_px"} | {
    c for c in IMAGE_COLUMNS if c.startswith("n_")
}
_BOOL_COLUMNS = {"low_confidence", "touches_border", "too_small", "illumination_evened"}


def measurement_columns() -> tuple[str, ...]:
    """The columns `fracscope.measure.measure_particle` returns, in its order."""
    # Asking the measurement core itself keeps the table in step with it.
    tiny = np.ones((3, 3), dtype=bool)
    return tuple(measure_particle(tiny, np.ones((3, 3), dtype=np.uint8), 1.0))


def particle_columns(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Header of particles.csv: key columns, measurement columns, the networks' probability columns, then `extra`."""
    cols = [*KEY_COLUMNS, *measurement_columns(), *NETWORK_PROB_COLUMNS]
    cols += [c for c in extra if c not in cols]
    return tuple(cols)


def image_key(result: ImageResult) -> tuple[str, int]:
    """(image, page) identifying an image page: the source path as given, or the stem."""
    source = str(result.image.source) if result.image.source else ""
    return (source or result.stem, int(result.image.page))


def source_identity(source: str | os.PathLike | None) -> tuple[str, int | None, int | None]:
    """(resolved path, size in bytes, mtime in ns) of an input file; size and mtime are None
    when it cannot be stat'ed (an in-memory image)."""
    if not source:
        return "", None, None
    path = Path(source).resolve()
    try:
        st = path.stat()
    except OSError:
        return str(path), None, None
    return str(path), st.st_size, st.st_mtime_ns


def length_unit(pixel_size_um: float | None) -> str:
    """"um" when the pixel size is known, "px" when lengths are in pixels."""
    return "px" if pixel_size_um is None else "um"


def _cell(value: object) -> str:
    """One CSV cell: full-precision floats, empty for missing, True/False for flags."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "" if math.isnan(v) else repr(v)
    return str(value)


def particle_row(result: ImageResult, particle: ParticleResult) -> dict[str, object]:
    """The particles.csv row of one particle, as a column → value dict."""
    image, page = image_key(result)
    px = result.image.pixel_size_um
    row: dict[str, object] = {
        "image": image,
        "page": page,
        "particle_id": int(particle.particle_id),
        "group": result.group,
        "class": particle.class_name,
    }
    for col, p in zip(PROB_COLUMNS, particle.probs):
        row[col] = float(p)
    row.update(
        low_confidence=bool(particle.low_confidence),
        touches_border=bool(particle.touches_border),
        too_small=bool(particle.too_small),
        pixel_size_um=None if px is None else float(px),
        pixel_size_source=result.image.pixel_size_source,
        length_unit=length_unit(px),
    )
    for col, v in zip(BBOX_COLUMNS, particle.bbox):
        row[col] = int(v)
    row.update(particle.measurements)
    row.update({col: particle.network_probs.get(col) for col in NETWORK_PROB_COLUMNS})
    return row


def image_row(result: ImageResult) -> dict[str, object]:
    """The images.csv row of one image page (counts over all detected particles, then the quality
    numbers and flags of `fracscope.report.quality`)."""
    image, page = image_key(result)
    px = result.image.pixel_size_um
    h, w = result.instances.shape[:2]
    parts = result.particles
    row: dict[str, object] = {
        "image": image,
        "page": page,
        "stem": result.stem,
        "group": result.group,
        "height_px": h,
        "width_px": w,
        "pixel_size_um": px,
        "pixel_size_source": result.image.pixel_size_source,
        "length_unit": length_unit(px),
        "pixel_size_estimate_um": result.image.estimated_pixel_size_um,
        "n_particles": len(parts),
        "n_touches_border": sum(p.touches_border for p in parts),
        "n_too_small": sum(p.too_small for p in parts),
        "n_low_confidence": sum(p.low_confidence for p in parts),
    }
    for name in CLASS_NAMES:
        row[f"n_{name}"] = sum(p.class_name == name for p in parts)
    row["source_path"], row["source_size_bytes"], row["source_mtime_ns"] = source_identity(result.image.source)
    row.update(image_quality(result).columns())
    row["pore_polarity"] = result.pore_polarity
    row["n_curtain_streaks"] = result.curtain_streaks
    row["shading"] = None if result.shading is None else round(result.shading, 6)
    row["illumination_evened"] = result.illumination_evened
    row["edge_contrast"] = None if result.edge_contrast is None else round(result.edge_contrast, 6)
    return row


def _read_header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), None)


def iter_csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV as str dicts; rows cut short by a crash are skipped."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        for fields in reader:
            if len(fields) == len(header):
                yield dict(zip(header, fields))


def done_images(output_dir: str | os.PathLike) -> set[tuple[str, int]]:
    """(image, page) pairs a previous run finished, from images.csv.

    The pipeline skips these on resume. Failed images are not done, so they are tried
    again.
    """
    return read_done(output_dir)[0]


def read_done(
    output_dir: str | os.PathLike,
) -> tuple[set[tuple[str, int]], dict[tuple[str, int], tuple[int | None, int | None]]]:
    """From one pass over images.csv: the (image, page) pairs a previous run finished, and the resume
    keys, (resolved path, page) -> (size, mtime_ns)."""
    path = Path(output_dir) / IMAGES_CSV
    done: set[tuple[str, int]] = set()
    sources: dict[tuple[str, int], tuple[int | None, int | None]] = {}
    if not path.exists():
        return done, sources
    for row in iter_csv_rows(path):
        try:
            page = int(row["page"])
            done.add((row["image"], page))
        except (KeyError, ValueError):
            continue  # a line cut short by a crash
        try:
            size, mtime = row.get("source_size_bytes", ""), row.get("source_mtime_ns", "")
            sources[(row["source_path"], page)] = (int(size) if size else None, int(mtime) if mtime else None)
        except (KeyError, ValueError):
            continue  # an older images.csv (no source columns)
    return done, sources


def _keep_done_rows(path: Path, done: set[tuple[str, int]]) -> int:
    """Rewrite `path` keeping rows of done images only; returns rows dropped."""
    header = _read_header(path)
    if header is None:
        return 0
    tmp = path.with_suffix(path.suffix + ".tmp")
    kept = total = 0
    with path.open(newline="", encoding="utf-8") as src, tmp.open("w", newline="", encoding="utf-8") as dst:
        reader = csv.reader(src)
        next(reader)
        writer = csv.writer(dst)
        writer.writerow(header)
        i_img, i_page = header.index("image"), header.index("page")
        for fields in reader:
            total += 1
            if len(fields) != len(header):
                continue
            try:
                key = (fields[i_img], int(fields[i_page]))
            except ValueError:
                continue
            if key in done:
                writer.writerow(fields)
                kept += 1
    if kept == total:
        tmp.unlink()
    else:
        os.replace(tmp, path)
    return total - kept


class _CsvAppender:
    """A CSV file opened for appending whole blocks of rows, flushed per block."""

    def __init__(self, path: Path, columns: tuple[str, ...], resume: bool):
        self.path = path
        existing = _read_header(path) if resume else None
        self.columns = tuple(existing) if existing else columns
        self._file = path.open("a" if existing else "w", newline="", encoding="utf-8")
        if not existing:
            self._write([self.columns])
        self._warned: set[str] = set()

    def _write(self, rows: Iterable[Iterable[str]]) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        # One write and a flush per block: a crash loses at most the block in flight.
        self._file.write(buf.getvalue())
        self._file.flush()

    def append(self, rows: list[dict[str, object]]) -> None:
        unknown = {k for r in rows for k in r} - set(self.columns) - self._warned
        if unknown:
            warnings.warn(f"{self.path.name}: columns {sorted(unknown)} are not in the header; dropped", stacklevel=3)
            self._warned |= unknown
        self._write([_cell(r.get(c)) for c in self.columns] for r in rows)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class ParticleTableWriter:
    """Streams particles.csv and images.csv; converts particles to Parquet at close.

    Parameters
    ----------
    output_dir : path
        The run's output folder (created if missing).
    resume : bool
        Append to the tables of a previous run instead of starting new ones. Rows of
        images the previous run did not finish are dropped first.

    Notes
    -----
    The particles.csv header is fixed when the file is created: the key columns, the
    `measure_particle` columns, and any further measurement key present in the first
    image written. Later unknown keys are dropped with a warning.
    """

    def __init__(self, output_dir: str | os.PathLike, resume: bool = False):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.particles_path = self.output_dir / PARTICLES_CSV
        self.images_path = self.output_dir / IMAGES_CSV
        self.done, self.done_sources = read_done(self.output_dir) if resume else (set(), {})
        if resume:
            _keep_done_rows(self.particles_path, self.done)
            _keep_done_rows(self.images_path, self.done)
        self._images = _CsvAppender(self.images_path, IMAGE_COLUMNS, resume)
        self._particles: _CsvAppender | None = None
        if resume and _read_header(self.particles_path):
            self._particles = _CsvAppender(self.particles_path, particle_columns(), resume=True)

    def write_particles(self, rows: list[dict[str, object]]) -> None:
        """Append the particle rows of one image (`particle_row`; call `commit` after its other outputs)."""
        if self._particles is None:
            extra = [k for r in rows for k in r]
            self._particles = _CsvAppender(self.particles_path, particle_columns(extra), resume=False)
        if rows:
            self._particles.append(rows)

    def commit(self, row: dict[str, object]) -> None:
        """Record the image's `image_row` in images.csv: from now on it counts as done."""
        self._images.append([row])
        self.done.add((str(row["image"]), int(row["page"])))  # type: ignore[call-overload]
        self.done_sources[(row["source_path"], row["page"])] = (row["source_size_bytes"], row["source_mtime_ns"])

    def close_files(self) -> None:
        """Close the CSVs, writing nothing more."""
        self._images.close()
        if self._particles is not None:
            self._particles.close()

    def close(self) -> Path:
        """Close the CSVs and write particles.parquet; returns its path."""
        if self._particles is None:  # no image at all: still leave a valid, empty table
            self._particles = _CsvAppender(self.particles_path, particle_columns(), resume=False)
        self._particles.close()
        self._images.close()
        out = self.output_dir / PARTICLES_PARQUET
        csv_to_parquet(self.particles_path, out)
        return out


class ErrorTableWriter:
    """Streams errors.csv (image, page, error): one row per file or page that failed."""

    def __init__(self, output_dir: str | os.PathLike, resume: bool = False):
        self.path = Path(output_dir) / ERRORS_CSV
        # A resume lists again the files it skips: those an earlier run listed are not appended twice,
        # so a resume with nothing to do leaves errors.csv as it was.
        self._skipped_before = (
            {r["image"] for r in iter_csv_rows(self.path) if r.get("error", "").startswith(SKIPPED_PREFIX)}
            if resume and self.path.exists() else set()
        )
        self._csv = _CsvAppender(self.path, ERROR_COLUMNS, resume)

    def add(self, source: str, page: int, message: str) -> None:
        """Record a failure."""
        self._csv.append([{"image": source, "page": int(page), "error": message}])

    def close_file(self) -> None:
        """Close errors.csv, writing nothing more."""
        self._csv.close()

    def add_skipped(self, source: str, reason: str) -> None:
        """Record a file that was passed over on purpose (e.g. an unsupported type): not a failure."""
        if source not in self._skipped_before:
            self.add(source, 0, SKIPPED_PREFIX + reason)

    def close(self, done: set[tuple[str, int]]) -> list[dict[str, object]]:
        """Close, drop failures that later succeeded (resume) and duplicates; return the rest."""
        self._csv.close()
        rows, seen = [], set()
        for r in iter_csv_rows(self.path):
            try:
                key = (r["image"], int(r["page"]))
            except ValueError:
                continue
            if key in done or (*key, r["error"]) in seen:
                continue
            seen.add((*key, r["error"]))
            rows.append({"image": key[0], "page": key[1], "error": r["error"]})
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(ERROR_COLUMNS)
            w.writerows([r["image"], r["page"], r["error"]] for r in rows)
        os.replace(tmp, self.path)
        return rows


def column_types(columns: Iterable[str]) -> dict[str, str]:
    """Logical type of each column: "string", "int64", "bool" or "float64"."""
    out = {}
    for c in columns:
        if c in _STRING_COLUMNS:
            out[c] = "string"
        elif c in _INT_COLUMNS:
            out[c] = "int64"
        elif c in _BOOL_COLUMNS:
            out[c] = "bool"
        else:
            out[c] = "float64"
    return out


def csv_to_parquet(csv_path: Path, parquet_path: Path, block_size: int = 1 << 24) -> None:
    """Convert a fracscope CSV to Parquet in blocks (bounded memory), typed per column."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    header = _read_header(csv_path) or []
    arrow = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(), "float64": pa.float64()}
    types = {c: arrow[t] for c, t in column_types(header).items()}
    schema = pa.schema([(c, types[c]) for c in header])
    convert = pacsv.ConvertOptions(
        column_types=types,
        strings_can_be_null=False,
        null_values=[""],
        true_values=["True"],
        false_values=["False"],
    )
    tmp = parquet_path.with_suffix(".parquet.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        reader = pacsv.open_csv(
            csv_path, read_options=pacsv.ReadOptions(block_size=block_size), convert_options=convert
        )
        for batch in reader:
            writer.write_batch(batch)
    os.replace(tmp, parquet_path)
