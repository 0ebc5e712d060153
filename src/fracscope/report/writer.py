"""ReportWriter: every output of a bulk inference run, written as images arrive."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path


from fracscope.report.coco import CocoWriter
from fracscope.report.markdown import write_summary_md
from fracscope.report.options import ReportOptions
from fracscope.report.plots import write_plots
from fracscope.report.quality import (
    COARSE_PIXELS,
    EDGE_CONTRAST,
    SCALE_IMPLAUSIBLE,
    UNEVEN_ILLUMINATION,
    describe_flags,
    illumination_evened,
    parse_flags,
)
from fracscope.report.record import (
    INSTANCES_DIR,
    PHASES_DIR,
    ImageRecord,
    make_record,
    write_image_files,
    write_instances,
    write_phases,
)
from fracscope.report.resume import RunLog
from fracscope.report.review import ReviewSampler, write_low_confidence
from fracscope.report.summary import (
    SUMMARY_JSON,
    Summary,
    build_summary,
    make_provenance,
    scan_particles,
    trained_pixel_sizes,
    write_summary_json,
)
from fracscope.report.tables import SKIPPED_PREFIX, ErrorTableWriter, ParticleTableWriter, image_key
from fracscope.types import ImageResult

log = logging.getLogger(__name__)


def _plain_config(config: Mapping | None) -> dict:
    """The config as plain dicts and lists (OmegaConf objects converted)."""
    if config is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    except ImportError:  # omegaconf is a dependency, but the report does not need it
        pass
    return dict(config)


class ReportWriter:
    """Streams the per-image outputs of a run and writes the summaries at close.

    Parameters
    ----------
    output_dir : path
        Run folder; its layout is documented in docs/OUTPUTS.md.
    config : dict
        The run's full config, stored verbatim in the provenance. Without `options`,
        its `report` section, if any, sets `ReportOptions`.
    provenance : dict
        Caller's provenance (model hash, model path, …), stored in summary.json.
    resume : bool
        Continue a previous run in the same folder: tables are appended, and images
        already done (`done`) are skipped by `add`.
    options : ReportOptions, optional
        What the report counts and writes (the caller's, read from its config once).
    run_log : RunLog, optional
        The run's line of runs.jsonl: written before the run's first output, and every
        run of the folder is listed in the provenance (`runs`).
    input_root : path, optional
        The input folder; COCO `file_name`s are image paths relative to it (file names without it).

    Examples
    --------
    >>> writer = ReportWriter(out, cfg, {"model_hash": h}, resume=True)  # doctest: +SKIP
    >>> for result in results:                                           # doctest: +SKIP
    ...     if image_key(result) not in writer.done:
    ...         writer.add(result)
    >>> summary = writer.close()                                         # doctest: +SKIP
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        config: Mapping | None,
        provenance: Mapping | None,
        resume: bool = False,
        options: ReportOptions | None = None,
        run_log: RunLog | None = None,
        input_root: str | os.PathLike | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.config = _plain_config(config)
        self.options = ReportOptions.from_config(self.config) if options is None else options
        self.provenance = make_provenance(self.config, dict(provenance or {}))
        self._tables = ParticleTableWriter(self.output_dir, resume)
        self._errors = ErrorTableWriter(self.output_dir, resume)
        self._coco = (
            CocoWriter(self.output_dir, resume, self._tables.done) if self.options.write_coco else None
        )
        self.input_root = input_root
        self._review = ReviewSampler.from_options(self.options)
        self._failures: list[tuple[str, int, str]] = []
        self._closed = False
        self._resume = resume
        self._run_log = run_log
        self._n_added = 0
        if not resume:  # the tables were just started afresh: so is runs.jsonl
            self._record_run()

    @property
    def done(self) -> set[tuple[str, int]]:
        """(image, page) of images already written, this run or a resumed one."""
        return self._tables.done

    def done_images(self) -> set[tuple[str, int]]:
        """A copy of `done`: the (image, page) pairs as the runs named them."""
        return set(self._tables.done)

    def done_sources(self) -> dict[tuple[str, int], tuple[int | None, int | None]]:
        """A copy of the resume keys: (resolved path, page) -> (size, mtime_ns) of the images done."""
        return dict(self._tables.done_sources)

    def _record_run(self) -> None:
        if self._run_log is not None:
            self._run_log.record_once()

    @property
    def failures(self) -> list[tuple[str, int, str]]:
        """(image, page, error) of failures: this session's until `close`, then the
        final list of errors.csv (earlier sessions' failures that were not retried
        successfully included)."""
        return list(self._failures)

    def add(self, result: ImageResult) -> bool:
        """Write everything for one image; returns False if it was already done (skipped)."""
        if self._closed:
            raise RuntimeError("ReportWriter is closed")
        if image_key(result) in self._tables.done:
            warnings.warn(f"{image_key(result)} is already in the report; skipped", stacklevel=2)
            return False
        write_image_files(result, self.output_dir, self.options)
        return self.add_record(make_record(result, self.options, self.input_root, self.review_thresholds()))

    def review_thresholds(self) -> dict[str, float]:
        """The ranks a particle must beat to enter the review sample now (for `make_record`)."""
        return self._review.thresholds()

    def add_record(self, record: ImageRecord) -> bool:
        """Add one image whose files are written (`write_image_files`) to the tables, COCO and review
        sample; returns False if it was already done (skipped)."""
        if self._closed:
            raise RuntimeError("ReportWriter is closed")
        if record.key in self._tables.done:
            warnings.warn(f"{record.key} is already in the report; skipped", stacklevel=2)
            return False
        self._record_run()
        self._n_added += 1
        if record.review is not None:
            self._review.take(record.review)
        self._tables.write_particles(record.particle_rows)
        if self._coco is not None and record.coco is not None:
            self._coco.add(record.coco)
        # Last: the images.csv row marks the image done (see tables.done_images).
        self._tables.commit(record.image_row)
        self._warn_unreliable(record.image_row)
        return True

    def _warn_unreliable(self, row: Mapping[str, object]) -> None:
        """A warning per image whose scale looks wrong or too coarse for the networks, whose contrast they
        were not trained on (SE-like edges), or whose uneven illumination was left as it is
        (even_illumination=false); images.csv flags it too. Names the likely cause."""
        warned = [SCALE_IMPLAUSIBLE, COARSE_PIXELS, EDGE_CONTRAST]
        if not illumination_evened(row):
            warned.append(UNEVEN_ILLUMINATION)  # evened out: handled, said in summary.md only
        for flag in (f for f in warned if f in parse_flags(row.get("quality_flags"))):
            (words,) = describe_flags({**row, "quality_flags": flag}, trained_pixel_sizes(self.provenance))
            page = f" page {row['page']}" if row.get("page") else ""
            log.warning("%s%s: %s", row["image"], page, words)

    def add_failure(self, source: str, page: int, message: str) -> None:
        """Record a file or page that could not be processed (errors.csv)."""
        self._record_run()
        self._errors.add(str(source), int(page), str(message))
        self._failures.append((str(source), int(page), str(message)))

    def add_skipped(self, source: str, reason: str) -> None:
        """Record a file that was passed over (errors.csv, error "skipped: <reason>"); not a failure."""
        self._errors.add_skipped(str(source), reason)

    def close(self) -> Summary:
        """Write particles.parquet, summary.json/md, plots, review sheets and COCO."""
        if self._closed:
            raise RuntimeError("ReportWriter is already closed")
        self._closed = True
        self._record_run()
        if self._run_log is not None:
            self.provenance["runs"] = self._run_log.runs
        out = self.output_dir
        self._tables.close()
        failed = [r for r in self._errors.close(self._tables.done) if not r["error"].startswith(SKIPPED_PREFIX)]
        self._failures = [(f["image"], f["page"], f["error"]) for f in failed]
        self.provenance["n_failed"] = len(failed)
        scan = scan_particles(out, self.options)
        summary = build_summary(scan, self.options, self.provenance, failed)
        write_summary_json(summary, out)
        write_summary_md(summary, out)
        if self.options.write_plots:
            write_plots(summary, scan, out)
        if self.options.write_review:
            self._review.write_sheets(out)
            write_low_confidence(out)
        if self._coco is not None:
            keys = ("fracscope_version", "created_utc", "phase_model_sha256", "phase_model_path",
                    "section_model_sha256", "section_model_path", "model_hash", "model_sha256", "model_path")
            info = {k: self.provenance[k] for k in keys if self.provenance.get(k) is not None}
            self._coco.close({"description": "fracscope predictions", **info})
        return summary

    def nothing_new(self) -> bool:
        """True for a resume that wrote nothing when the folder's summary covers its every run:
        then `close_unchanged` leaves every output as it was."""
        if not self._resume or self._n_added or self._failures or self._run_log is None:
            return False
        try:
            recorded = json.loads((self.output_dir / SUMMARY_JSON).read_text(encoding="utf-8"))["provenance"]["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            return False  # no summary of the last run (killed before its close): close writes it
        return self._run_log.finished_earlier(recorded)

    def close_unchanged(self) -> None:
        """Close the open tables without writing anything (after `nothing_new`)."""
        if self._closed:
            raise RuntimeError("ReportWriter is already closed")
        self._closed = True
        self._tables.close_files()
        self._errors.close_file()
        if self._coco is not None:
            self._coco.close_file()


__all__ = ["INSTANCES_DIR", "PHASES_DIR", "ReportWriter", "image_key", "write_instances", "write_phases"]
