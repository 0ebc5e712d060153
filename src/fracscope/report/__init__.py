"""Reporting stage of bulk inference: tables, statistics, plots, overlays, review, COCO.

`ReportWriter` is the entry point: `add` each `ImageResult` as it arrives, `add_failure`
for files that failed, and `close` for the summaries. The output layout is an API,
documented in docs/OUTPUTS.md.
"""

from fracscope.report.options import ReportOptions
from fracscope.report.stats import (
    TestResult,
    bootstrap_fraction_ci,
    class_fractions_by_size,
    compare_groups,
    mean_radial_profile,
    porosity_summary,
    wilson_interval,
)
from fracscope.report.summary import GroupSummary, Summary
from fracscope.report.tables import ParticleTableWriter, done_images, image_key
from fracscope.report.writer import ReportWriter

__all__ = [
    "GroupSummary",
    "ParticleTableWriter",
    "ReportOptions",
    "ReportWriter",
    "Summary",
    "TestResult",
    "bootstrap_fraction_ci",
    "class_fractions_by_size",
    "compare_groups",
    "done_images",
    "image_key",
    "mean_radial_profile",
    "porosity_summary",
    "wilson_interval",
]
