"""summary.md: the run's summary as a readable Markdown report with tables."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from fracscope.report.summary import GroupSummary, Summary, display_name
from fracscope.types import CLASS_NAMES

SUMMARY_MD = "summary.md"
MAX_FLAGGED_LINES = 100  # flagged images listed one per line; the rest are counted (images.csv has them all)

_LABEL = {"intact": "intact", "mildly_damaged": "mildly damaged", "broken": "broken"}
_TEST_LABEL = {
    "chi2": "Pearson chi-square test of independence",
    "fisher_exact": "Fisher's exact test (2×2)",
    "fisher_exact_mc": "Fisher-Freeman-Halton exact test (Monte Carlo p)",
}


def _f(v: float | None, nd: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _all_groups(summary: Summary) -> list[GroupSummary]:
    return [*summary.groups, summary.total] if len(summary.groups) > 1 else [summary.total]


def _class_section(summary: Summary) -> list[str]:
    lines = ["## Damage classes", ""]
    header = ["group", "images", "particles counted"] + [_LABEL[c] for c in CLASS_NAMES]
    rows = []
    for g in _all_groups(summary):
        row = [display_name(g.name), str(g.n_images), str(g.n_particles_counted)]
        row += [f"{g.counts[c]} ({_f(g.pct[c])} %)" for c in CLASS_NAMES]
        rows.append(row)
    lines += _table(header, rows)
    header = ["group", "class", "%", "Wilson 95 % CI", "bootstrap 95 % CI (over images)"]
    rows = []
    for g in _all_groups(summary):
        for c in CLASS_NAMES:
            lo, hi = g.wilson_pct[c]
            blo, bhi = g.bootstrap_pct[c]
            name = display_name(g.name)
            rows.append([name, _LABEL[c], _f(g.pct[c]), f"{_f(lo)}–{_f(hi)}", f"{_f(blo)}–{_f(bhi)}"])
    lines += _table(header, rows)
    opts = summary.options
    who = "all detected particles"
    if not opts.get("count_border_particles") and not opts.get("count_too_small"):
        who = "particles that neither touch the image border nor are flagged too small"
    elif not opts.get("count_border_particles"):
        who = "particles that do not touch the image border"
    elif not opts.get("count_too_small"):
        who = "particles not flagged too small"
    lines.append(
        f"Counted: {who}. Wilson intervals treat particles as independent; bootstrap intervals "
        "resample whole images and are the ones to trust when images differ."
    )
    lines.append("")
    curtains = summary.curtains
    if curtains.get("streaks"):
        lines.append(
            f"Curtaining: in {curtains['images_with_streaks']} of {curtains['images']} image"
            f"{'s' if curtains['images'] != 1 else ''}, {curtains['streaks']} crack line"
            f"{'s' if curtains['streaks'] != 1 else ''} along the milling direction, lined up across particles, "
            "were taken for curtain streaks and not counted as cracks (images.csv `n_curtain_streaks`; "
            "`remove_curtains=false` keeps them)."
        )
        lines.append("")
    excl = ["group", "detected", "touching border", "too small", "low confidence (counted)"]
    rows = [
        [
            display_name(g.name),
            str(g.n_particles_detected),
            str(g.n_touching_border),
            str(g.n_too_small),
            str(g.n_low_confidence),
        ]
        for g in _all_groups(summary)
    ]
    lines += _table(excl, rows)
    t = summary.test
    if t is not None:
        if t.test_name == "none":
            lines.append("Between-group test: not possible (fewer than two groups or classes with particles).")
        else:
            stat = "odds ratio" if t.test_name == "fisher_exact" else "statistic"
            note = f"smallest expected count {_f(t.min_expected, 1)}"
            if t.test_name != "chi2":
                note += (
                    f" < 5, so not chi-square (chi-square would give {_f(t.chi2_statistic, 3)}, "
                    f"p = {_p(t.chi2_p_value)})"
                )
            lines.append(
                f"Between groups: {_TEST_LABEL.get(t.test_name, t.test_name)}, {stat} = {_f(t.statistic, 3)}, "
                f"dof = {t.dof}, **p = {_p(t.p_value)}** ({note})."
            )
        lines.append("")
    lines += ["![class fractions](plots/class_fractions.png)", ""]
    return lines


def _porosity_section(summary: Summary) -> list[str]:
    groups = _all_groups(summary)
    lines = ["## Porosity (Eq. 1) of complete sections", ""]
    rows = [
        [display_name(g.name), str(g.porosity_pct["n"]), _f(g.porosity_pct["mean"], 2), _f(g.porosity_pct["sd"], 2)]
        for g in groups
    ]
    lines += _table(["group", "sections", "porosity mean %", "SD %"], rows)
    fr = groups[0].radial_profile["fractions"]
    header = ["group"] + [f"r ≤ {round(100 * f)} % R" for f in fr]
    rows = []
    for g in groups:
        rp = g.radial_profile
        cells = [f"{_f(m, 2)} ± {_f(s, 2)}" for m, s in zip(rp["mean_pct"], rp["sd_pct"])]
        rows.append([display_name(g.name), *cells])
    lines += ["Radial profile: porosity inside the circle of radius r (mean ± SD over sections, %).", ""]
    lines += _table(header, rows)
    lines += ["![porosity histogram](plots/porosity_hist.png)", "", "![radial profile](plots/radial_profile.png)", ""]
    return lines


def _size_section(summary: Summary) -> list[str]:
    lines = ["## Size", ""]
    rows = [
        [
            display_name(g.name),
            str(g.eq_diameter_um["n"]),
            _f(g.eq_diameter_um["mean"], 2),
            _f(g.eq_diameter_um["sd"], 2),
            _f(g.eq_diameter_um["median"], 2),
        ]
        for g in _all_groups(summary)
    ]
    lines += _table(["group", "particles (µm known)", "eq. diameter mean µm", "SD µm", "median µm"], rows)
    for g in _all_groups(summary):
        body = []
        for b in g.size_bins:
            if b["n"] == 0:
                continue
            hi = "∞" if not math.isfinite(b["bin_high_um"]) else f"{b['bin_high_um']:g}"
            body.append([f"{b['bin_low_um']:g}–{hi}", str(b["n"])] + [_f(b[f"pct_{c}"]) for c in CLASS_NAMES])
        if body:
            lines += [f"Class fractions by equivalent diameter, group **{display_name(g.name)}**:", ""]
            lines += _table(["eq. diameter µm", "n"] + [f"{_LABEL[c]} %" for c in CLASS_NAMES], body)
    lines += ["![size distribution](plots/size_distribution.png)", ""]
    return lines


def _check_first_section(summary: Summary) -> list[str]:
    """The flagged images, one line each with the reasons in words (`fracscope.report.quality`)."""
    lines = ["## Images to check first", ""]
    n_images = summary.total.n_images
    if not summary.flagged:
        return lines + [f"No image was flagged ({n_images} checked; the flags are defined in docs/OUTPUTS.md).", ""]
    n = len(summary.flagged)
    lines += [f"{n} of {n_images} image{'s' if n_images != 1 else ''} flagged (images.csv column `quality_flags`; "
              "definitions in docs/OUTPUTS.md):", ""]
    for f in summary.flagged[:MAX_FLAGGED_LINES]:
        page = f" page {f['page']}" if f["page"] else ""
        lines.append(f"- `{f['image']}`{page}: " + "; ".join(f["reasons"] or f["flags"]))
    if n > MAX_FLAGGED_LINES:
        lines.append(f"- … and {n - MAX_FLAGGED_LINES} more: images.csv rows with a non-empty `quality_flags`")
    return lines + [""]


def render_markdown(summary: Summary) -> str:
    """The text of summary.md."""
    prov = summary.provenance
    lines = ["# fracscope report", ""]
    lines += [
        f"- created: {prov.get('created_utc', '–')}",
        f"- fracscope version: {prov.get('fracscope_version', '–')}",
    ]
    for key in ("phase_model_sha256", "phase_model_path", "section_model_sha256", "section_model_path", "model_hash",
                "model_sha256", "model", "model_path", "command"):
        if prov.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: `{prov[key]}`")
    if prov.get("int8_kernels") == "reference":
        lines.append("- int8 models: run in their reference form (this x86 CPU has no VNNI, whose fused int8 kernels "
                     "saturate; the results are the models' own, see docs/OUTPUTS.md)")
    lines += [
        f"- images: {summary.total.n_images}, particles detected: {summary.total.n_particles_detected}, "
        f"failed files/pages: {len(summary.failed)}",
        "",
    ]
    lines += _check_first_section(summary)
    lines += _class_section(summary) + _porosity_section(summary) + _size_section(summary)
    if summary.failed:
        lines += ["## Failed files", ""]
        rows = [
            [str(f["image"]), str(f["page"]), str(f["error"]).replace("|", "\\|").replace("\n", " ")]
            for f in summary.failed
        ]
        lines += _table(["image", "page", "error"], rows)
    lines += ["## Provenance", "", "<details><summary>provenance and full config</summary>", "", "```json"]
    lines += [json.dumps(summary.to_dict()["provenance"], indent=2), "```", "", "</details>", ""]
    return "\n".join(lines)


def write_summary_md(summary: Summary, output_dir: str | os.PathLike) -> Path:
    """Write summary.md next to summary.json."""
    path = Path(output_dir) / SUMMARY_MD
    path.write_text(render_markdown(summary), encoding="utf-8")
    return path
