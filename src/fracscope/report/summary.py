"""Per-group class fractions, intervals, porosity and tests, from the run's tables.

The summary is computed at close by reading particles.csv back in chunks: per image
it keeps only class counts, and per particle a few float32 scalars (size, porosity,
radial profile), so memory stays bounded for thousands of images, and a resumed run
summarises the images of earlier runs too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from fracscope.measure import PROFILE_FRACTIONS
from fracscope.report.options import ReportOptions
from fracscope.report.quality import QUALITY_COLUMNS, describe_flags, parse_flags
from fracscope.report.stats import (
    TestResult,
    bootstrap_fraction_ci,
    class_fractions_by_size,
    compare_groups,
    mean_radial_profile,
    porosity_summary,
    wilson_interval,
)
from fracscope.report.tables import IMAGES_CSV, PARTICLES_CSV
from fracscope.types import CLASS_NAMES

SUMMARY_SCHEMA_VERSION = "1.2"  # 1.1: flagged_images; 1.2: curtains
SUMMARY_JSON = "summary.json"
TOTAL = "all"  # name of the pooled group

PROFILE_COLUMNS: tuple[str, ...] = tuple(f"porosity_r{round(f * 100)}_pct" for f in PROFILE_FRACTIONS)


@dataclass
class ParticleScan:
    """What the summary needs from particles.csv and images.csv, in compact arrays.

    Per image (images.csv order): `image_group` (index into `groups`), class `counts`
    of the counted particles, and `n_detected`, `n_border`, `n_too_small`,
    `n_low_confidence` (low-confidence among counted). Per particle: `group`,
    `class_idx`, `counted` (in the class fractions), `complete` (not touching the
    border, not too small), `eq_diameter_um` (NaN when the pixel size is unknown),
    `porosity_pct` and `profile_pct` (n, len(PROFILE_FRACTIONS)).
    """

    groups: list[str]
    image_group: np.ndarray
    counts: np.ndarray
    n_detected: np.ndarray
    n_border: np.ndarray
    n_too_small: np.ndarray
    n_low_confidence: np.ndarray
    group: np.ndarray
    class_idx: np.ndarray
    counted: np.ndarray
    complete: np.ndarray
    eq_diameter_um: np.ndarray
    porosity_pct: np.ndarray
    profile_pct: np.ndarray
    flagged: list[dict] = field(default_factory=list)  # images.csv rows with quality flags (`_read_flagged`)
    curtain_streaks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per image (images.csv)


def display_name(group: str) -> str:
    """A group's name for tables and plots ("(no group)" for the empty name)."""
    return group if group else "(no group)"


def _read_images(path: Path) -> pd.DataFrame:
    """images.csv's image, page, group and `n_curtain_streaks` (0 for an older run without the column), one
    row per image page."""
    cols = ["image", "page", "group"]
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols}).assign(n_curtain_streaks=np.int64(0))
    streaks = "n_curtain_streaks" in pd.read_csv(path, nrows=0).columns
    df = pd.read_csv(path, usecols=[*cols, "n_curtain_streaks"] if streaks else cols,
                     dtype={"image": str, "group": str}, keep_default_na=False)
    df["page"] = pd.to_numeric(df["page"], errors="coerce")
    df["n_curtain_streaks"] = (pd.to_numeric(df["n_curtain_streaks"], errors="coerce").fillna(0).astype(np.int64)
                               if streaks else np.int64(0))
    return df.dropna(subset=["page"]).astype({"page": np.int64}).drop_duplicates(["image", "page"])


def _read_flagged(path: Path) -> list[dict]:
    """The images.csv rows (as str dicts: image, page, pixel size, its estimate and the quality columns) whose
    `quality_flags` is not empty, in images.csv order; none for an images.csv of an older run."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    header = pd.read_csv(path, nrows=0).columns
    if "quality_flags" not in header:
        return []
    cols = ["image", "page", *(c for c in ("pixel_size_um", "pixel_size_estimate_um", *QUALITY_COLUMNS, "shading",
                                           "illumination_evened", "edge_contrast") if c in header)]
    df = pd.read_csv(path, usecols=cols, dtype=str, keep_default_na=False, on_bad_lines="skip")
    df = df[(df["quality_flags"] != "") & df["page"].str.fullmatch(r"\d+")].drop_duplicates(["image", "page"])
    return df.to_dict("records")


def trained_pixel_sizes(provenance: dict) -> tuple[float, float] | None:
    """The pixel sizes the run's phase model (else crop model) was trained on, from the provenance."""
    for key in ("phase_model_metadata", "model_metadata"):
        found = (provenance.get(key) or {}).get("pixel_size_range_um")
        if found:
            return float(found[0]), float(found[1])
    return None


def scan_particles(output_dir: str | os.PathLike, options: ReportOptions, chunksize: int = 200_000) -> ParticleScan:
    """Read images.csv and particles.csv (chunked) into a `ParticleScan`."""
    out = Path(output_dir)
    images = _read_images(out / IMAGES_CSV).reset_index(drop=True)
    groups = sorted(images["group"].unique().tolist())
    gcode = {g: i for i, g in enumerate(groups)}
    n_img, n_cls = len(images), len(CLASS_NAMES)
    image_group = np.array([gcode[g] for g in images["group"]], dtype=np.int32)
    counts = np.zeros((n_img, n_cls), dtype=np.int64)
    per_image = {k: np.zeros(n_img, dtype=np.int64) for k in ("det", "border", "small", "lowc")}
    index = images[["image", "page"]].assign(_row=np.arange(n_img))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("group", "cls", "counted", "complete", "d", "por", "prof")}

    path = out / PARTICLES_CSV
    if path.exists() and path.stat().st_size > 0:
        header = pd.read_csv(path, nrows=0).columns
        wanted = ["image", "page", "class", "touches_border", "too_small", "low_confidence", "length_unit"]
        wanted += [c for c in ("eq_diameter_um", "porosity_pct", *PROFILE_COLUMNS) if c in header]
        reader = pd.read_csv(
            path, usecols=wanted, dtype=str, keep_default_na=False, chunksize=chunksize, on_bad_lines="skip"
        )
        lookup = {name: i for i, name in enumerate(CLASS_NAMES)}
        for chunk in reader:
            chunk["page"] = pd.to_numeric(chunk["page"], errors="coerce")
            chunk = chunk.dropna(subset=["page"]).astype({"page": np.int64})
            chunk = chunk.merge(index, on=["image", "page"], how="inner")
            cls = chunk["class"].map(lookup)
            chunk, cls = chunk[cls.notna()], cls[cls.notna()].to_numpy(np.int64)
            row = chunk["_row"].to_numpy()
            border = chunk["touches_border"].to_numpy() == "True"
            small = chunk["too_small"].to_numpy() == "True"
            lowc = chunk["low_confidence"].to_numpy() == "True"
            counted = options.counts(border, small)
            np.add.at(counts, (row[counted], cls[counted]), 1)
            np.add.at(per_image["det"], row, 1)
            np.add.at(per_image["border"], row[border], 1)
            np.add.at(per_image["small"], row[small], 1)
            np.add.at(per_image["lowc"], row[lowc & counted], 1)

            def num(col: str) -> np.ndarray:
                if col not in chunk:
                    return np.full(len(chunk), np.nan, dtype=np.float32)
                return pd.to_numeric(chunk[col], errors="coerce").to_numpy(np.float32)

            d = num("eq_diameter_um")
            d[chunk["length_unit"].to_numpy() != "um"] = np.nan  # pixel lengths are not µm
            parts["group"].append(image_group[row])
            parts["cls"].append(cls.astype(np.int8))
            parts["counted"].append(counted)
            parts["complete"].append(~border & ~small)
            parts["d"].append(d)
            parts["por"].append(num("porosity_pct"))
            parts["prof"].append(np.stack([num(c) for c in PROFILE_COLUMNS], axis=1))

    def cat(key: str, dtype, shape=(0,)) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.zeros(shape, dtype=dtype)

    return ParticleScan(
        groups=groups,
        image_group=image_group,
        counts=counts,
        n_detected=per_image["det"],
        n_border=per_image["border"],
        n_too_small=per_image["small"],
        n_low_confidence=per_image["lowc"],
        group=cat("group", np.int32),
        class_idx=cat("cls", np.int8),
        counted=cat("counted", bool),
        complete=cat("complete", bool),
        eq_diameter_um=cat("d", np.float32),
        porosity_pct=cat("por", np.float32),
        profile_pct=cat("prof", np.float32, (0, len(PROFILE_COLUMNS))),
        flagged=_read_flagged(out / IMAGES_CSV),
        curtain_streaks=images["n_curtain_streaks"].to_numpy(np.int64),
    )


@dataclass
class GroupSummary:
    """Summary of one group (or of all images pooled, name "all").

    Class numbers cover the counted particles (see ReportOptions); porosity and the
    radial profile cover complete sections (not touching the border, not too small);
    sizes and size bins cover counted particles of images with a known pixel size.
    Percentages and intervals are in percent.
    """

    name: str
    n_images: int
    n_particles_detected: int
    n_particles_counted: int
    n_touching_border: int
    n_too_small: int
    n_low_confidence: int
    counts: dict[str, int]
    pct: dict[str, float]
    wilson_pct: dict[str, list[float]]
    bootstrap_pct: dict[str, list[float]]
    size_bins: list[dict]
    eq_diameter_um: dict[str, float]
    porosity_pct: dict[str, float]
    radial_profile: dict[str, list]


def _group_summary(
    name: str, scan: ParticleScan, img_sel: np.ndarray, part_sel: np.ndarray, options: ReportOptions
) -> GroupSummary:
    """Summary of the images `img_sel` and their particles `part_sel` (boolean masks)."""
    counts_img = scan.counts[img_sel]
    counts = counts_img.sum(axis=0)
    n = int(counts.sum())
    boot_lo, boot_hi = bootstrap_fraction_ci(counts_img, options.n_boot, options.seed, options.confidence)
    wilson = {c: [100 * v for v in wilson_interval(int(k), n, options.confidence)] for c, k in zip(CLASS_NAMES, counts)}

    counted = part_sel & scan.counted
    has_size = counted & np.isfinite(scan.eq_diameter_um)
    size_table = class_fractions_by_size(
        scan.eq_diameter_um[has_size], scan.class_idx[has_size].astype(np.int64), np.asarray(options.size_bins_um)
    )
    d = scan.eq_diameter_um[has_size].astype(np.float64)
    d_sum = porosity_summary(d)
    complete = part_sel & scan.complete
    por = porosity_summary(scan.porosity_pct[complete])
    prof = mean_radial_profile(scan.profile_pct[complete], PROFILE_FRACTIONS)
    return GroupSummary(
        name=name,
        n_images=int(img_sel.sum()),
        n_particles_detected=int(scan.n_detected[img_sel].sum()),
        n_particles_counted=n,
        n_touching_border=int(scan.n_border[img_sel].sum()),
        n_too_small=int(scan.n_too_small[img_sel].sum()),
        n_low_confidence=int(scan.n_low_confidence[img_sel].sum()),
        counts={c: int(k) for c, k in zip(CLASS_NAMES, counts)},
        pct={c: (100.0 * k / n if n else math.nan) for c, k in zip(CLASS_NAMES, counts)},
        wilson_pct=wilson,
        bootstrap_pct={c: [100 * float(lo), 100 * float(hi)] for c, lo, hi in zip(CLASS_NAMES, boot_lo, boot_hi)},
        size_bins=size_table.rows(),
        eq_diameter_um={
            "mean": d_sum.mean,
            "sd": d_sum.sd,
            "median": float(np.median(d)) if d.size else math.nan,
            "n": d_sum.n,
        },
        porosity_pct={"mean": por.mean, "sd": por.sd, "n": por.n},
        radial_profile={
            "fractions": list(prof.fractions),
            "mean_pct": list(prof.mean_pct),
            "sd_pct": list(prof.sd_pct),
            "n": list(prof.n),
        },
    )


@dataclass
class Summary:
    """The run's summary: per group, pooled ("all"), the test between groups, provenance.

    `test` is None with fewer than two groups. `failed` lists the files or pages that
    could not be processed (image, page, error). `flagged` lists the images with quality flags
    (image, page, flags, reasons: the flags in words), in images.csv order.
    """

    groups: list[GroupSummary]
    total: GroupSummary
    test: TestResult | None
    provenance: dict
    failed: list[dict] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    flagged: list[dict] = field(default_factory=list)
    curtains: dict = field(default_factory=dict)  # {"images", "images_with_streaks", "streaks"} (`fracscope.curtains`)
    schema_version: str = SUMMARY_SCHEMA_VERSION

    def group(self, name: str) -> GroupSummary:
        """The summary of group `name` ("all" for the pooled one)."""
        if name == TOTAL:
            return self.total
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN and inf become None); layout documented in docs/OUTPUTS.md."""
        return jsonable(
            {
                "schema_version": self.schema_version,
                "class_names": list(CLASS_NAMES),
                "groups": {g.name: asdict(g) for g in self.groups},
                "total": asdict(self.total),
                "test": None if self.test is None else self.test.to_dict(),
                "options": self.options,
                "provenance": self.provenance,
                "failed": self.failed,
                "flagged_images": self.flagged,
                "curtains": self.curtains,
            }
        )


def jsonable(obj):
    """Plain JSON types, NaN and inf as None (summary files are strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)  # paths, enums, config objects: their text form


def build_summary(scan: ParticleScan, options: ReportOptions, provenance: dict, failed: list[dict]) -> Summary:
    """Summaries per group and pooled, and the test between groups."""
    n_groups = len(scan.groups)
    groups = [
        _group_summary(g, scan, scan.image_group == i, scan.group == i, options) for i, g in enumerate(scan.groups)
    ]
    total = _group_summary(
        TOTAL, scan, np.ones(len(scan.image_group), bool), np.ones(len(scan.group), bool), options
    )
    test = None
    if n_groups >= 2:
        table = np.array([[g.counts[c] for c in CLASS_NAMES] for g in groups])
        test = compare_groups(table, seed=options.seed)
    opts = asdict(options)
    trained = trained_pixel_sizes(provenance)
    flagged = [
        {"image": r["image"], "page": int(r["page"]), "flags": parse_flags(r["quality_flags"]),
         "reasons": describe_flags(r, trained)}
        for r in scan.flagged
    ]
    streaks = scan.curtain_streaks
    curtains = {"images": int(streaks.size), "images_with_streaks": int((streaks > 0).sum()), "streaks": int(streaks.sum())}
    return Summary(groups, total, test, provenance, failed, opts, flagged, curtains)


def make_provenance(config: dict, provenance: dict) -> dict:
    """Provenance block: fracscope version, UTC time, what the caller gave, full config."""
    from fracscope import __version__

    out = {"fracscope_version": __version__, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.update(provenance or {})
    out["config"] = config
    return out


def write_summary_json(summary: Summary, output_dir: str | os.PathLike) -> Path:
    """Write summary.json (strict JSON: no NaN)."""
    path = Path(output_dir) / SUMMARY_JSON
    text = json.dumps(summary.to_dict(), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path
